"""Every shipped language through real bwrap and POST /api/run: hello world with stdin, a file
in and a file out, and a compile (or syntax) error reported as status error.

Each language whose toolchain is missing on this machine is skipped with the reason.
"""

from __future__ import annotations

import base64
import shutil
import subprocess

import pytest

from tests.conftest import require
from tests.integration.conftest import SandboxServer

TOOLS = {
    "python": "python3",
    "javascript": "node",
    "bash": "bash",
    "sh": "sh",
    "perl": "perl",
    "c": "gcc",
    "cpp": "g++",
    "java": "javac",
    "rust": "rustc",
    "tcl": "tclsh",
    "sqlite": "sqlite3",
}

PROGRAMS = {
    "python": """
import os, sys
name = sys.stdin.read().strip()
data = open("data/in.txt").read().strip()
os.makedirs("out", exist_ok=True)
open("out/result.txt", "w").write(data.upper())
print(f"hello {name} {data}")
""",
    "javascript": """
const fs = require('fs');
const name = fs.readFileSync(0, 'utf8').trim();
const data = fs.readFileSync('data/in.txt', 'utf8').trim();
fs.mkdirSync('out', { recursive: true });
fs.writeFileSync('out/result.txt', data.toUpperCase());
console.log(`hello ${name} ${data}`);
""",
    "bash": """
read -r name
data=$(cat data/in.txt)
mkdir -p out
printf '%s' "${data^^}" > out/result.txt
echo "hello $name $data"
""",
    "sh": """
read name
data=$(cat data/in.txt)
mkdir -p out
printf '%s' "$data" | tr a-z A-Z > out/result.txt
echo "hello $name $data"
""",
    "perl": """
my $name = <STDIN>; chomp $name;
open(my $f, '<', 'data/in.txt') or die "in: $!"; my $data = <$f>; chomp $data; close $f;
mkdir 'out';
open(my $o, '>', 'out/result.txt') or die "out: $!"; print $o uc($data); close $o;
print "hello $name $data\\n";
""",
    "c": r"""
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
int main(void) {
    char name[64] = {0}, data[64] = {0};
    if (!fgets(name, sizeof name, stdin)) return 2;
    name[strcspn(name, "\n")] = 0;
    FILE *f = fopen("data/in.txt", "r");
    if (!f || !fgets(data, sizeof data, f)) return 3;
    fclose(f);
    data[strcspn(data, "\n")] = 0;
    mkdir("out", 0755);
    FILE *o = fopen("out/result.txt", "w");
    for (char *p = data; *p; p++) fputc(toupper((unsigned char)*p), o);
    fclose(o);
    printf("hello %s %s\n", name, data);
    return 0;
}
""",
    "cpp": r"""
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
int main() {
    std::string name, data;
    std::getline(std::cin, name);
    std::ifstream in("data/in.txt");
    std::getline(in, data);
    std::filesystem::create_directories("out");
    std::string up = data;
    std::transform(up.begin(), up.end(), up.begin(), ::toupper);
    std::ofstream("out/result.txt") << up;
    std::cout << "hello " << name << " " << data << "\n";
}
""",
    "java": """
import java.io.*;
import java.nio.file.*;
public class Main {
    public static void main(String[] args) throws Exception {
        String name = new BufferedReader(new InputStreamReader(System.in)).readLine().trim();
        String data = Files.readString(Path.of("data/in.txt")).trim();
        Files.createDirectories(Path.of("out"));
        Files.writeString(Path.of("out/result.txt"), data.toUpperCase());
        System.out.println("hello " + name + " " + data);
    }
}
""",
    "rust": """
use std::fs;
use std::io::Read;
fn main() {
    let mut name = String::new();
    std::io::stdin().read_to_string(&mut name).unwrap();
    let data = fs::read_to_string("data/in.txt").unwrap();
    let data = data.trim();
    fs::create_dir_all("out").unwrap();
    fs::write("out/result.txt", data.to_uppercase()).unwrap();
    println!("hello {} {}", name.trim(), data);
}
""",
    "tcl": """
set name [string trim [read stdin]]
set f [open data/in.txt r]; set data [string trim [read $f]]; close $f
file mkdir out
set o [open out/result.txt w]; puts -nonewline $o [string toupper $data]; close $o
puts "hello $name $data"
""",
    # SQL reads no stdin; it greets with a constant and writes with the shell's writefile()
    "sqlite": """
CREATE TABLE t(x TEXT);
INSERT INTO t VALUES (trim(CAST(readfile('data/in.txt') AS TEXT), char(10)));
CREATE TABLE written AS SELECT writefile('result.txt', upper(x)) AS n FROM t;
SELECT 'hello world ' || x FROM t;
""",
}

BROKEN = {
    "python": ("def f(:\n    pass\n", "SyntaxError"),
    "javascript": ("function (\n", "SyntaxError"),
    "bash": ("if then fi\n", "syntax error"),
    "sh": ("if then fi\n", "Syntax error"),
    "perl": ("print 'x' +;\n", "syntax error"),
    "c": ("int main(void) { return undefined_name; }\n", "undefined_name"),
    "cpp": ("int main() { undefined_function(); }\n", "undefined_function"),
    "java": ("public class Main { void f() { int x = ; } }\n", "error"),
    "rust": ('fn main() { let x: i32 = "text"; }\n', "mismatched types"),
    "tcl": ("puts [\n", "missing close-bracket"),
    "sqlite": ("SELEC 1;\n", "syntax error"),
}

COMPILED = {"c", "cpp", "java", "rust"}


def _host_problem(language: str) -> str | None:
    """Why this host cannot run the language's toolchain even outside a sandbox, if it cannot:
    not installed, or a compiler that fails `--version` (e.g. a rustup proxy with no toolchain
    for this user's HOME)."""
    tool = TOOLS[language]
    if shutil.which(tool) is None:
        return f"{tool} is not installed"
    if language in COMPILED:
        try:
            subprocess.run([tool, "--version"], capture_output=True, timeout=60, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{tool} does not run on this host ({exc})"
    return None


# The toolchains packaging/install.sh provides (gcc, g++ and Python; bash and sh come with the
# system): these are checked inside the test with require(), so CI fails where they are missing.
# The rest are optional on a host and skip without them.
PROVIDED = {"python", "bash", "sh", "c", "cpp"}


def _params(names: list[str]) -> list[object]:
    params = []
    for n in names:
        why = None if n in PROVIDED else _host_problem(n)
        params.append(pytest.param(n, marks=pytest.mark.skipif(why is not None, reason=why or "")))
    return params


def _require_toolchain(language: str) -> None:
    if language in PROVIDED:
        why = _host_problem(language)
        require(why is None, why or "")


@pytest.mark.parametrize("language", _params(sorted(PROGRAMS)))
def test_hello_stdin_and_files(sandbox_server: SandboxServer, language: str) -> None:
    _require_toolchain(language)
    result = sandbox_server.run(
        language,
        PROGRAMS[language],
        stdin="world\n",
        files={"data/in.txt": base64.b64encode(b"abc\n").decode()},
        fetch_files=["result.txt" if language == "sqlite" else "out/result.txt", "not-made.txt"],
        timeout_s=60,
    )
    assert result["status"] == "ok", result
    assert result["stdout"] == "hello world abc\n"
    assert result["exit_code"] == 0 and result["phase"] == "run"
    [(_, content)] = result["files"].items()
    assert base64.b64decode(content) == b"ABC"
    assert result["duration_ms"] > 0 and result["peak_memory_mb"] > 0 and result["cpu_ms"] > 0


@pytest.mark.parametrize("language", _params(sorted(BROKEN)))
def test_compile_and_syntax_errors(sandbox_server: SandboxServer, language: str) -> None:
    _require_toolchain(language)
    code, needle = BROKEN[language]
    result = sandbox_server.run(language, code, timeout_s=60)
    assert result["status"] == "error", result
    assert result["exit_code"] not in (0, None)
    assert needle in result["stderr"] + result["stdout"]
    assert result["phase"] == ("compile" if language in COMPILED else "run")


def test_python_multiprocessing_works_inside(sandbox_server: SandboxServer) -> None:
    code = (
        "from multiprocessing import Pool\n"
        "def square(x):\n"
        "    return x * x\n"
        "if __name__ == '__main__':\n"
        "    with Pool(2) as pool:\n"
        "        print(sum(pool.map(square, range(10))))\n"
    )
    result = sandbox_server.run("python", code, timeout_s=30)
    assert (result["status"], result["stdout"]) == ("ok", "285\n"), result


def test_python_sees_site_packages_and_site_builtins_without_pth_hooks(
    sandbox_server: SandboxServer,
) -> None:
    """The driver starts with -S (no .pth start-up code) and puts site-packages back itself:
    installed packages import, exit() and help exist, as under a plain `python main.py`."""
    code = (
        "import site, sys\n"
        "paths = [p for p in site.getsitepackages() if p in sys.path]\n"
        "print(bool(paths), callable(help), sys.flags.no_site)\n"
        "exit(3)\n"
    )
    result = sandbox_server.run("python", code, timeout_s=30)
    assert result["stdout"] == "True True 1\n", result
    assert (result["status"], result["exit_code"]) == ("error", 3), result
