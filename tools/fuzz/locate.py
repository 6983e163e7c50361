"""Whether an `error:` line says where the problem is: FILE:LINE, a flag, a file as a whole."""

import re

_AT_LINE = re.compile(r"^error: .+?:\d+: ")
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")
_KEY_PATH = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+|\[\d+\])*$")


def located(line: str, paths: list[str]) -> bool:
    """Whether an `error:` line says where: FILE:LINE:, a flag (--set, --model, ...), a file that is
    the problem as a whole (not found, empty ...) or a file inside a given checkpoint directory.
    `STRATEGY: key.path: ...` lacks the line."""
    if _AT_LINE.match(line) or _FLAG.search(line):
        return True
    body = line.removeprefix("error: ")
    if body.startswith("STRATEGY: "):  # the strategy argument itself, by its name in --help
        return True
    # A path is shown with its control characters escaped (`abc\x00`), as every error line is.
    paths = [p for path in paths for p in (path, repr(path)[1:-1])]
    for path in sorted(paths, key=len, reverse=True):
        if path and body.startswith(path.rstrip("/") + "/"):  # a file inside a given directory (a checkpoint's)
            return True
        if path and body.startswith(path + ": "):
            head, sep, _ = body[len(path) + 2 :].partition(": ")
            return not (sep and _KEY_PATH.match(head))
    return False


def file_args(argv: list[str]) -> list[str]:
    """The file-ish arguments of a command line: the strategy and the values of path flags."""
    out, args = [], [a for a in argv if a != "--debug"]
    if len(args) > 1 and (args[1] == "-" or not args[1].startswith("-")):
        out.append(args[1])
    for i, arg in enumerate(args[:-1]):
        if arg in ("--model", "-m", "--prompts", "--output", "-o"):
            out.append(args[i + 1])
    return out


def mentions_flag(text: str) -> bool:
    return bool(_FLAG.search(text))
