"""Which Flower app (FAB) an institution's node accepts: only the fedcredit release it installed.

In Flower's deployment model the coordinator ships the app of each run as a FAB (a zip of the
project's files) and a SuperNode would install it and run its ClientApp. A fedcredit node never
runs code from a FAB (:mod:`clients.node_runtime` always runs the installed
``clients.client_app:app``); it only *checks* the FAB, so that a run of anything but the
installed release is refused with ``app-not-allowed`` and the operator sees why:

1. the FAB's ``pyproject.toml`` names the installed app: publisher ``fedcredit``, name
   ``fedcredit``, the installed version, and ClientApp ``clients.client_app:app``;
2. every file of the FAB that lies in one of the installed packages (``clients/``,
   ``privacy/``, ``models/``, ``configs/``, ``fedcredit/``, ``server/``, ``simulation/``) is
   byte-for-byte the installed file (SHA-256 of the zip member, not the FAB's own manifest);
   files outside these packages (tests, docs, benchmarks) are never used by a node and ignored;
3. when the node config has ``allowed-fab-hashes`` (comma-separated SHA-256 of FAB files, e.g.
   the hash the consortium published for a reviewed release and the institution recomputed with
   ``flwr build``), the FAB's SHA-256 must be one of them.

Everything here is computed from the FAB and the installed files only — no borrower data — so
the refusal's detail (what was offered, what is allowed) may leave the node.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

APP_PUBLISHER = "fedcredit"  # [tool.flwr.app] publisher in pyproject.toml (a test keeps them equal)
APP_NAME = "fedcredit"
CLIENTAPP_REF = "clients.client_app:app"
INSTALLED_PACKAGES = ("clients", "configs", "fedcredit", "models", "privacy", "server", "simulation")
MAX_PROBLEMS_SHOWN = 5


@dataclass(frozen=True)
class InstalledRelease:
    """The fedcredit installed on this machine: what the node runs and accepts."""

    fab_id: str  # publisher/name, as Flower names a FAB
    version: str
    package_dirs: dict[str, Path] = field(default_factory=dict, compare=False)

    def describe(self, allowed_hashes: frozenset[str] = frozenset()) -> str:
        text = f"{self.fab_id} {self.version} with code identical to the files installed at this node"
        if allowed_hashes:
            text += " and a FAB SHA-256 in allowed-fab-hashes (" + ", ".join(sorted(h[:12] for h in allowed_hashes)) + ")"
        return text


@dataclass(frozen=True)
class FabVerdict:
    """The outcome of :func:`check_fab`: ``allowed``, or the problems; ``offered`` names the FAB."""

    allowed: bool
    offered: str
    problems: tuple[str, ...] = ()

    def detail(self, release: InstalledRelease, allowed_hashes: frozenset[str]) -> str:
        shown = list(self.problems[:MAX_PROBLEMS_SHOWN])
        more = len(self.problems) - len(shown)
        return (f"offered: {self.offered}; allowed: {release.describe(allowed_hashes)}; "
                f"mismatch: {'; '.join(shown)}" + (f" (and {more} more)" if more > 0 else ""))


@functools.lru_cache(maxsize=1)
def installed_release() -> InstalledRelease:
    """The installed fedcredit: its version and where each of its packages lives."""
    try:
        version = importlib.metadata.version(APP_NAME)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree, not installed
        version = "0+unknown"
    dirs = {}
    for pkg in INSTALLED_PACKAGES:
        spec = importlib.util.find_spec(pkg)
        if spec is not None and spec.submodule_search_locations:
            dirs[pkg] = Path(list(spec.submodule_search_locations)[0]).resolve()
    return InstalledRelease(fab_id=f"{APP_PUBLISHER}/{APP_NAME}", version=version, package_dirs=dirs)


def parse_allowed_hashes(value: object) -> frozenset[str]:
    """``allowed-fab-hashes`` of the node config: comma/space-separated SHA-256 hex digests."""
    from configs.errors import UserError

    if value in (None, ""):
        return frozenset()
    out = set()
    for part in str(value).replace(",", " ").split():
        h = part.strip().lower()
        if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
            raise UserError(f"--node-config: allowed-fab-hashes: '{part}' is not a SHA-256 hex digest (64 hex "
                            "characters); give the full hash of each allowed FAB, comma-separated "
                            "(sha256sum of the .fab file that 'flwr build' writes)")
        out.add(h)
    return frozenset(out)


def _file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _project_problems(project: dict, release: InstalledRelease) -> list[str]:
    """Problems with the FAB's pyproject.toml: publisher, name, version, ClientApp reference."""
    app = project.get("tool", {}).get("flwr", {}).get("app", {})
    publisher, name = app.get("publisher", ""), project.get("project", {}).get("name", "")
    version = project.get("project", {}).get("version", "")
    problems = []
    if f"{publisher}/{name}" != release.fab_id:
        problems.append(f"app id {publisher}/{name} is not {release.fab_id}")
    if version != release.version:
        problems.append(f"version {version} is not the installed {release.version}")
    clientapp = app.get("components", {}).get("clientapp", "")
    if clientapp != CLIENTAPP_REF:
        problems.append(f"ClientApp {clientapp!r} is not {CLIENTAPP_REF!r}")
    return problems


def _code_problems(fab: zipfile.ZipFile, release: InstalledRelease) -> list[str]:
    """FAB files inside the installed packages that differ from (or are missing in) the install."""
    problems = []
    for member in sorted(fab.namelist()):
        top, _, rest = member.partition("/")
        if not rest or member.endswith("/") or top not in INSTALLED_PACKAGES:
            continue
        base = release.package_dirs.get(top)
        installed = (base / rest) if base is not None else None
        want = _file_sha256(installed) if installed is not None else None
        if want is None:
            problems.append(f"{member} is not part of the installed release")
        elif hashlib.sha256(fab.read(member)).hexdigest() != want:
            problems.append(f"{member} differs from the installed file")
    return problems


def check_fab(content: bytes, allowed_hashes: frozenset[str] = frozenset(),
              release: InstalledRelease | None = None) -> FabVerdict:
    """May this node take part in a run of the FAB ``content``? See the module docstring."""
    release = release or installed_release()
    digest = hashlib.sha256(content).hexdigest()
    try:
        fab = zipfile.ZipFile(io.BytesIO(content))
        project = tomllib.loads(fab.read("pyproject.toml").decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError) as exc:
        return FabVerdict(False, f"a FAB (sha256 {digest[:12]}) that cannot be read", (f"unreadable FAB: {exc}",))
    app = project.get("tool", {}).get("flwr", {}).get("app", {})
    offered = (f"{app.get('publisher', '?')}/{project.get('project', {}).get('name', '?')} "
               f"{project.get('project', {}).get('version', '?')} (FAB sha256 {digest[:12]})")
    problems = _project_problems(project, release)
    with fab:
        problems += _code_problems(fab, release)
    if allowed_hashes and digest not in allowed_hashes:
        problems.append(f"FAB sha256 {digest[:12]} is not in allowed-fab-hashes")
    return FabVerdict(not problems, offered, tuple(problems))
