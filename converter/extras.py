"""What to install for one of the package's extras, as a command a user can run today.

coat-paddle is not on a package index, so ``pip install 'coat-paddle[cpu]'`` cannot work for a
user. :func:`install_hint` names the extra's own packages instead, read from the installed
distribution's metadata (the ``extra == "..."`` markers), so that the pins live only in
pyproject.toml. Every layer imports it from here; it imports neither paddle nor torch.
"""

from __future__ import annotations

import shlex
from importlib import metadata

DISTRIBUTION = "coat-paddle"


def _requirements(extra: str, requires: list[str], seen: set[str]) -> list[str]:
    """The requirements ``extra`` adds on this platform, without markers, in pyproject's order;
    an extra that names other extras of this distribution (``coat-paddle[hub,onnx]``) expands."""
    # a dependency, imported only on this path (an error message's)
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen.add(extra)
    environment = {**default_environment(), "extra": extra}
    found: list[str] = []
    for line in requires:
        requirement = Requirement(line)
        if requirement.marker is None or not requirement.marker.evaluate(environment):
            continue  # a core dependency, another extra's, or not for this platform
        if canonicalize_name(requirement.name) == DISTRIBUTION:
            for inner in sorted(requirement.extras - seen):
                found += _requirements(inner, requires, seen)
            continue
        requirement.marker = None
        found.append(str(requirement))
    return found


def install_hint(extra: str) -> str:
    """The shell command that installs what ``extra`` adds, e.g. ``pip install
    'paddlepaddle>=3.0'`` for ``cpu``; each requirement quoted as a POSIX shell needs.

    Without the distribution's metadata (run from a checkout that was not installed), or with an
    installed version that does not know ``extra``, it says to install the extra from the checkout.
    """
    try:
        requires = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        requires = []
    packages = list(dict.fromkeys(_requirements(extra, requires, set()))) if requires else []
    if not packages:
        return f"pip install '.[{extra}]' in the coat-paddle checkout"
    return "pip install " + " ".join(shlex.quote(package) for package in packages)
