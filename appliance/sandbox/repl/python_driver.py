"""Runs INSIDE a sandbox, under the sandbox's own Python (3.8 or newer): the warm-pool driver.

The daemon starts this as the sandbox's first process, before any code exists, so a pooled
sandbox is an interpreter that has already started and only waits. Protocol: frames are a 4-byte
big-endian length and a JSON object. The driver writes {"ready": true} on the result descriptor
(argv[1]), then reads one frame from stdin:

- {"op": "run", "path": ..., "args": [...]}: one-shot. The driver closes its result descriptor and
  runs the file as `python path args...` would (same __main__, sys.argv, tracebacks and exit
  status); the rest of stdin is the program's stdin. The process ends with the program.
- {"op": "repl"}: stateful. stdin becomes the control channel ({"op": "exec", "code", "marker"}
  frames) and the program sees /dev/null as stdin. Each cell runs in one persistent namespace;
  the value of a final expression is returned as `result`. After a cell the driver writes the
  marker to stdout and stderr (so the daemon can cut each stream per cell) and then a result
  frame. SIGINT (the daemon's cell timeout) becomes KeyboardInterrupt in the cell.
"""

# This file is not imported by the appliance; it must stay compatible with Python 3.8.
#
# Start-up is paid once per sandbox, and a sandbox serves one run, so it imports only what every
# run needs: no json (its import pulls in re and enum, ~20 ms of a ~50 ms start), no traceback and
# no contextlib (another ~20 ms). Frames are read with the C scanner behind json (_json) and
# written by a small encoder; a one-shot run's uncaught exception is printed by the interpreter's
# own C excepthook, as `python main.py` prints it. ast, linecache and traceback are imported by
# the stateful cells, which alone need them.
import atexit
import builtins
import os
import struct
import sys
import types

RESULT_FD = int(sys.argv[1])


def without_site_hooks():
    """What `site` gives a program, less the start-up code of .pth files (the driver runs with
    -S): site-packages on sys.path, and the exit, quit, help, copyright, credits and
    license builtins."""
    if not sys.flags.no_site:
        return
    import site

    for path in site.getsitepackages():
        if path not in sys.path and os.path.isdir(path):
            sys.path.append(path)
    site.setquit()
    site.setcopyright()
    site.sethelper()


def read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


class _ScanContext:
    """What _json's C scanner reads from a JSONDecoder: plain JSON, no hooks."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo = {}  # type: dict[str, str]

    @staticmethod
    def parse_constant(name):
        raise ValueError("not JSON: " + name)


def _loads_with(scan):
    def loads(text):
        value, _end = scan(text, 0)
        return value

    return loads


try:
    import _json

    loads = _loads_with(_json.make_scanner(_ScanContext()))  # type: ignore[arg-type]
    quote = _json.encode_basestring_ascii
except (ImportError, AttributeError, TypeError):  # an interpreter without the C module
    import json

    loads = json.loads
    quote = json.dumps


def dumps(obj):
    """JSON for the driver's own frames: None, bools, numbers, strings, lists and dicts."""
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, (int, float)):
        return repr(obj)
    if isinstance(obj, str):
        return quote(obj)
    if isinstance(obj, dict):
        return "{" + ", ".join(quote(str(k)) + ": " + dumps(v) for k, v in obj.items()) + "}"
    return "[" + ", ".join(dumps(v) for v in obj) + "]"


def read_frame(fd):
    (n,) = struct.unpack(">I", read_exact(fd, 4))
    return loads(read_exact(fd, n).decode("utf-8"))


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_frame(fd, obj):
    body = dumps(obj).encode("utf-8")
    write_all(fd, struct.pack(">I", len(body)) + body)


def print_exception(exc, tb):
    """Print `exc` with traceback `tb` as the interpreter does for an uncaught exception (its C
    excepthook: no import, so it works after a MemoryError or with a broken import system)."""
    exc.__traceback__ = tb
    sys.__excepthook__(type(exc), exc, tb)


def user_traceback(exc):
    """The traceback of `exc` without this driver's own frames at its top."""
    tb = exc.__traceback__
    here = os.path.abspath(__file__)
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) == here:
        tb = tb.tb_next
    return tb


def new_main(path):
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    return main


def exit_code_of(exc):
    """The exit status `python` gives a SystemExit (printing a non-int code, as it does)."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:
        pass
    return 1


def finish(status):
    """End like the interpreter does, minus tearing down every module (about 4 ms): wait for
    non-daemon threads, run atexit handlers, flush the standard streams, exit."""
    if "threading" in sys.modules:
        try:
            sys.modules["threading"]._shutdown()
        except BaseException:
            pass
    try:
        atexit._run_exitfuncs()
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            status = status or 120  # python reports a failed final flush the same way
    os._exit(status)


def run_script(req):
    os.close(RESULT_FD)
    path = req["path"]
    sys.argv = [path, *list(req.get("args", []))]
    sys.path[0] = os.path.dirname(path)
    with open(path, "rb") as f:
        source = f.read()
    try:
        code = compile(source, path, "exec")
    except (SyntaxError, ValueError) as exc:
        print_exception(exc, None)
        finish(1)
    main = new_main(path)
    try:
        exec(code, main.__dict__)
    except SystemExit as exc:
        finish(exit_code_of(exc))
    except BaseException as exc:
        # without this driver's frames the traceback reads like `python main.py`'s
        print_exception(exc, user_traceback(exc))
        finish(130 if isinstance(exc, KeyboardInterrupt) else 1)
    finish(0)


CO_COROUTINE = 0x0080


class Cells:
    def __init__(self):
        import ast
        import linecache
        import traceback

        self.ast, self.linecache, self.traceback = ast, linecache, traceback
        self.top_level_await = getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)
        self.main = new_main("/workspace/<repl>")
        self.ns = self.main.__dict__
        self.count = 0
        self.loop = None

    def _run(self, code):
        if code.co_flags & CO_COROUTINE:
            if self.loop is None:
                import asyncio

                self.loop = asyncio.new_event_loop()
            return self.loop.run_until_complete(eval(code, self.ns))
        return eval(code, self.ns)

    def run(self, source):
        ast, TOP_LEVEL_AWAIT = self.ast, self.top_level_await
        self.count += 1
        filename = f"<cell {self.count}>"
        self.linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        result, ok, interrupted = None, True, False
        try:
            tree = compile(source, filename, "exec", ast.PyCF_ONLY_AST | TOP_LEVEL_AWAIT)
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = tree.body.pop()
            if tree.body:
                self._run(compile(tree, filename, "exec", TOP_LEVEL_AWAIT))
            if last is not None:
                expr = ast.Expression(last.value)
                value = self._run(compile(expr, filename, "eval", TOP_LEVEL_AWAIT))
                if value is not None:
                    self.ns["_"] = value
                    result = repr(value)[:65536]
        except SyntaxError as exc:
            ok = False
            self.traceback.print_exception(type(exc), exc, None)
        except BaseException as exc:  # a cell's exception, SystemExit included, is its output
            ok = False
            interrupted = isinstance(exc, KeyboardInterrupt)
            self.traceback.print_exception(type(exc), exc, user_traceback(exc))
        return {"ok": ok, "result": result, "interrupted": interrupted}


def repl():
    ctl = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.chdir("/workspace")
    sys.argv = [""]
    sys.path[0] = "/workspace"
    cells = Cells()
    while True:
        try:
            req = read_frame(ctl)
        except EOFError:
            return
        except KeyboardInterrupt:
            continue  # an interrupt that arrived after its cell ended
        if req.get("op") != "exec":
            return
        answer = cells.run(req["code"])
        marker = req["marker"].encode("utf-8")
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        write_all(1, marker)
        write_all(2, marker)
        import resource

        answer["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        write_frame(RESULT_FD, answer)


def main():
    without_site_hooks()
    write_frame(RESULT_FD, {"ready": True, "pid": os.getpid()})
    req = read_frame(0)
    if req.get("op") == "run":
        run_script(req)
    elif req.get("op") == "repl":
        repl()


if __name__ == "__main__":
    main()
