"""How every grokcopy command line ends on a mistake: one `error: ...` line that names the file or
flag and what to do, exit status 2 for a usage error and 1 for a runtime one, no traceback (unless
GROKCOPY_DEBUG=1, for whoever debugs grokcopy itself).

    def main(argv=None) -> int: ...
    if __name__ == "__main__":
        sys.exit(run_cli(main))
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path


class UsageError(ValueError):
    """A mistake in what the user asked for; the message names the argument and what to do."""


# Exception types that mean "the input is wrong" (exit 2) rather than "something failed" (exit 1).
USAGE_ERRORS = ("ConfigError", "NotARunError", "PrepareError", "UsageError")


def disk_of(path: str | os.PathLike) -> str:
    """The file system holding `path`, in words: its mount point and free space ("" if unknown)."""
    try:
        folder = Path(os.path.abspath(path))
        while not folder.exists():
            folder = folder.parent
        mount = folder
        while not os.path.ismount(mount):
            mount = mount.parent
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f"the file system mounted at {mount} has {free / 2**20:,.1f} MiB free"


def describe(error: BaseException) -> str:
    """One line for an exception: its message, with the OS's words and the file for OS errors (and,
    for a full disk, which disk)."""
    if isinstance(error, OSError) and error.errno is not None:
        where = f"{error.filename}: " if error.filename else ""
        disk = disk_of(error.filename) if error.filename and error.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        disk = f": {disk}" if disk else ""
        hint = {errno.ENOSPC: f" (the disk is full{disk}; free space, or point --out / --data elsewhere)",
                errno.EDQUOT: f" (your disk quota is used up{disk}; free space, or write elsewhere)",
                errno.EROFS: " (a read-only file system: choose a writable location)",
                errno.EACCES: " (permission denied: choose a location you can write)"}.get(error.errno, "")
        return f"{where}{os.strerror(error.errno)}{hint}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def exit_status(error: BaseException) -> int:
    return 2 if type(error).__name__ in USAGE_ERRORS or isinstance(error, FileNotFoundError) else 1


def run_cli(main: Callable[[], int | None], *args) -> int:
    """main(*args)'s exit status; an exception becomes one error line (see the module docstring)."""
    try:
        return main(*args) or 0
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    # every exception: the point is that nothing escapes as a traceback
    except Exception as error:  # noqa: BLE001
        if os.environ.get("GROKCOPY_DEBUG") == "1":
            raise
        print(f"error: {describe(error)}", file=sys.stderr)
        return exit_status(error)
