"""Pure trading logic (candles, indicators, validation, risk...) plus thin Bytewax wrappers.

Nothing here touches Kafka, PostgreSQL, the network, the environment or the clock.

Some modules may be compiled in place by ``make native`` (mypyc). Python imports a compiled
module instead of its source, so a source edited after compiling would silently not run:
importing this package refuses that, naming the file.
"""

from __future__ import annotations

from pathlib import Path


def check_compiled(package: Path) -> None:
    """Raise ImportError if a compiled module under ``package`` is older than its source."""
    for so in package.rglob("*.so"):
        source = so.with_name(so.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > so.stat().st_mtime:
            root = package.parent
            msg = (
                f"{source.relative_to(root)} changed after it was compiled to {so.relative_to(root)}, which Python "
                "would import instead: run `make native` to compile it again, or `make pure` to run the sources"
            )
            raise ImportError(msg)


check_compiled(Path(__file__).parent)
