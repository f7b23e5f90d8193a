"""Smoke test of an installed goxelpool package (run by bindings/python/package-test.sh, from a
directory outside the source tree, with a virtual environment's python).

    python smoke_installed.py SOCKET LIBRARY_PREFIX [JANSSON_PREFIX]

Checks that the package comes from the environment (not the source tree), ships py.typed, loads
libgoxelpool from under LIBRARY_PREFIX (and, if given, jansson only from under JANSSON_PREFIX, as
/proc/self/maps shows), and that Client and AsyncClient each make a call. Prints PASS/FAIL lines.
"""
import asyncio
import os
import sys

failures = 0


def check(name: str, ok: bool, detail: str = "") -> None:
    global failures
    print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
    failures += 0 if ok else 1


def main() -> int:
    socket_path, library_prefix = sys.argv[1], os.path.realpath(sys.argv[2])
    jansson_prefix = os.path.realpath(sys.argv[3]) if len(sys.argv) > 3 else None
    import goxelpool

    package_dir = os.path.dirname(os.path.realpath(goxelpool.__file__))
    check("installed-in-venv", package_dir.startswith(os.path.realpath(sys.prefix)), package_dir)
    check("py.typed", os.path.exists(os.path.join(package_dir, "py.typed")))
    with goxelpool.Client(socket_path=socket_path, pool={"min_connections": 1}) as client:
        check("client-call", client.call("echo", [1, "x"]) == [1, "x"])
    library = os.path.realpath(goxelpool.library_path()) if os.path.sep in goxelpool.library_path() else goxelpool.library_path()
    check("library-found-where-expected", library.startswith(library_prefix), f"{library} (expected under {library_prefix})")
    check("version", goxelpool.version() == goxelpool.__version__, f"{goxelpool.version()} / {goxelpool.__version__}")

    async def async_call() -> object:
        async with goxelpool.AsyncClient(socket_path=socket_path, pool={"min_connections": 1}) as client:
            return await client.call("echo", {"async": True})

    check("async-client-call", asyncio.run(async_call()) == {"async": True})
    with open("/proc/self/maps") as f:
        mapped = {line.split()[-1] for line in f if len(line.split()) >= 6}
    loaded = sorted(path for path in mapped if "libjansson" in path or "libgoxelpool" in path)
    print("  loaded: " + ", ".join(loaded))
    if jansson_prefix is not None:
        jansson = [path for path in loaded if "libjansson" in path]
        check("jansson-from-the-wheel", bool(jansson) and all(p.startswith(jansson_prefix) for p in jansson),
              ", ".join(jansson))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
