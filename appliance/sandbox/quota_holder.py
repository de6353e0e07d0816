"""The workspace mount holder: the first process of the daemon's mount namespace for workspaces.

The daemon starts this file (not the module: `python -I -S quota_holder.py`, standard library
only) inside a bwrap that gives it a mount namespace of its own and the capabilities to mount
there: CAP_SYS_ADMIN (and, in the user namespace an unprivileged daemon needs, CAP_SETUID and
CAP_SETGID to write the uid/gid maps of sandboxes created below it). See quota.py for why.

It reads one JSON request per line on stdin and answers one JSON line on stdout:
  {"op": "mount", "path": P, "size": BYTES, "inodes": N, "mode": M, "uid": U, "gid": G}
      a tmpfs of that size on the directory P (nosuid, nodev)
  {"op": "unmount", "path": P}            detach the tmpfs on P
  {"op": "maps", "pid": PID, "uid_map": S, "gid_map": S}
      the user namespace maps of a sandbox process waiting on its --userns-block-fd
Answers are {"ok": true} or {"ok": false, "errno": E, "error": TEXT}. The holder exits when stdin
closes (the daemon is gone; bwrap's --die-with-parent kills it too).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

MS_NOSUID = 0x2
MS_NODEV = 0x4
MNT_DETACH = 0x2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), what)


def mount_tmpfs(req: dict[str, object]) -> None:
    path = str(req["path"])
    options = (
        f"size={int(str(req['size']))},nr_inodes={int(str(req['inodes']))},"
        f"mode={int(str(req['mode'])):o},uid={int(str(req['uid']))},gid={int(str(req['gid']))}"
    )
    flags = MS_NOSUID | MS_NODEV
    _check(
        _libc.mount(b"appliance-workspace", path.encode(), b"tmpfs", flags, options.encode()), path
    )


def unmount(req: dict[str, object]) -> None:
    path = str(req["path"])
    _check(_libc.umount2(path.encode(), MNT_DETACH), path)


def write_maps(req: dict[str, object]) -> None:
    base = f"/proc/{int(str(req['pid']))}"
    try:
        with open(f"{base}/setgroups", "w") as f:
            f.write("deny")
    except PermissionError:
        pass  # already "deny", inherited from this namespace
    for name in ("uid_map", "gid_map"):
        with open(f"{base}/{name}", "w") as f:
            f.write(str(req[name]))


OPS = {"mount": mount_tmpfs, "unmount": unmount, "maps": write_maps}


def main() -> None:
    out = sys.stdout
    out.write(json.dumps({"ok": True, "ready": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            OPS[req["op"]](req)
            answer: dict[str, object] = {"ok": True}
        except OSError as exc:
            answer = {"ok": False, "errno": exc.errno or 0, "error": exc.strerror or str(exc)}
        except Exception as exc:  # a malformed request: the daemon's bug, reported back to it
            answer = {"ok": False, "errno": 0, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
