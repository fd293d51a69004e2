"""Installs flanneld's iptables rules (:mod:`pyflannel.iptables`) and keeps them in place.

At start, before subnet.env is written (flanneld's order, so that a container attached as soon
as the file appears is already masqueraded): when the previous subnet.env names another network
or subnet, the masquerade rules made for those are removed; then each rule set's chain is
created (or flushed) and its rules appended, one ``iptables-restore --noflush --wait``
transaction per set.  A thread then checks every ``--iptables-resync`` seconds that every rule
is there and, when one is missing, deletes and re-appends the whole set in one transaction, so
a rule deleted by hand comes back where it was.  Nothing is removed on exit: a restarted daemon
finds its rules and traffic keeps its addresses.

A check lists the chains the set touches (``iptables -S <chain>``: two per set) and looks for
each rule's line, instead of one ``iptables -C`` per rule as flanneld does (12 processes every
5 s, about three times the CPU: ``bench/iptables.py``).  Only when a line is not found are the
rules asked for one by one with ``iptables -C``, which decides: an iptables that prints a rule
differently costs the slow check, never a rule re-applied for nothing.

The commands are the host's ``iptables`` and ``iptables-restore``: iptables-nft (Debian's
default) and iptables-legacy both work.  A failing command is one log line, its stderr cut
short; it is retried at the next check and logged again only when the problem changes.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from ipaddress import IPv4Network

import structlog

from pyflannel.errors import IptablesError
from pyflannel.iptables import (
    RANDOM_FULLY_SINCE,
    RESTORE_WAIT_SINCE,
    WAIT_SINCE,
    Rule,
    RuleSet,
    forward_rules,
    install_lines,
    masq_rules,
    parse_version,
    remove_lines,
    restore_payload,
)
from pyflannel.options import DaemonOptions
from pyflannel.retry import OnceFilter
from pyflannel.untrusted import clip

log = structlog.get_logger("pyflannel")

#: The longest one command may take: with iptables-legacy, ``--wait`` waits for the xtables
#: lock for as long as another program holds it.
TIMEOUT = 60.0
#: How much of a failing command's stderr an error text quotes.
STDERR_CHARS = 200
#: Searched when $PATH has no iptables (a root shell's PATH may lack the sbin directories).
SBIN = "/usr/sbin:/sbin"


def _call(
    argv: Sequence[str], name: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise IptablesError(
            f"{name} did not finish within {TIMEOUT:.0f} s (is the xtables lock held?)"
        ) from None
    except OSError as exc:
        raise IptablesError(f"cannot run {name}: {exc.strerror or exc}") from None


def _failure(name: str, proc: subprocess.CompletedProcess[str]) -> IptablesError:
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    said = clip(" / ".join(lines), STDERR_CHARS) or "no message"
    return IptablesError(f"{name} failed (exit {proc.returncode}): {said}")


@dataclass(frozen=True)
class Iptables:
    """The host's iptables commands (argv prefixes: a test may run them in a namespace) and
    what their version supports."""

    iptables: tuple[str, ...]
    restore: tuple[str, ...]
    version: str  # as iptables prints it, e.g. "v1.8.9 (nf_tables)"
    wait: bool
    restore_wait: bool
    random_fully: bool

    @classmethod
    def probe(cls, iptables: Sequence[str], restore: Sequence[str]) -> Iptables:
        """Ask ``iptables --version`` what the commands support (go-iptables' test).

        Raises:
            IptablesError: iptables does not run or prints no version.
        """
        proc = _call([*iptables, "--version"], "iptables")
        if proc.returncode != 0:
            raise _failure("iptables --version", proc)
        version = parse_version(proc.stdout)
        if version is None:
            raise IptablesError(f"iptables --version printed no version: {clip(proc.stdout, 80)}")
        return cls(
            tuple(iptables),
            tuple(restore),
            proc.stdout.strip().removeprefix("iptables").strip(),
            wait=version >= WAIT_SINCE,
            restore_wait=version >= RESTORE_WAIT_SINCE,
            random_fully=version >= RANDOM_FULLY_SINCE,
        )

    @classmethod
    def find(cls) -> Iptables:
        """The ``iptables`` and ``iptables-restore`` on $PATH (else in /usr/sbin, /sbin).

        Raises:
            IptablesError: one of them is missing or does not run.
        """
        paths = []
        for name in ("iptables", "iptables-restore"):
            path = shutil.which(name) or shutil.which(name, path=SBIN)
            if path is None:
                raise IptablesError(f"{name} not found (install the iptables package)")
            paths.append(path)
        return cls.probe([paths[0]], [paths[1]])

    def _query(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run an iptables query: exit 0 is yes, 1 is no, anything else an error."""
        proc = _call([*self.iptables, *(["--wait"] if self.wait else []), *args], "iptables")
        if proc.returncode not in (0, 1):
            raise _failure(f"iptables {' '.join(args[:4])}", proc)
        return proc

    def _check(self, args: Sequence[str]) -> bool:
        return self._query(args).returncode == 0

    def listing(self, table: str, chain: str) -> set[str] | None:
        """The lines ``iptables -S <chain>`` prints, as iptables-save does; None if the chain
        does not exist."""
        proc = self._query(["-t", table, "-S", chain])
        return set(proc.stdout.splitlines()) if proc.returncode == 0 else None

    def has_chain(self, table: str, chain: str) -> bool:
        """Whether *chain* exists in *table*."""
        return self._check(["-t", table, "-S", chain, "1"])

    def has_rule(self, rule: Rule) -> bool:
        """Whether *rule* is in its chain (``iptables -C``)."""
        return self._check(["-t", rule.table, "-C", rule.chain, *rule.spec])

    def apply(self, table: str, lines: Sequence[str]) -> None:
        """Run *lines* on *table* as one ``iptables-restore --noflush`` transaction."""
        argv = [*self.restore, "--noflush", *(["--wait"] if self.restore_wait else [])]
        proc = _call(argv, "iptables-restore", restore_payload(table, lines))
        if proc.returncode != 0:
            raise _failure(f"iptables-restore ({table} table)", proc)


class RuleKeeper:
    """Installs rule sets at start and puts back, in order, what goes missing later."""

    def __init__(self, ipt: Iptables, sets: Sequence[RuleSet], stale: RuleSet | None = None):
        self.ipt = ipt
        self.sets = tuple(sets)
        # A previous run's masquerade rules, to remove first: those that are not ours now (only
        # the ones naming the subnet differ when the Network stayed).
        current = {r for rs in self.sets for r in rs.rules}
        self._stale = None
        if stale is not None:
            self._stale = replace(stale, rules=tuple(r for r in stale.rules if r not in current))
        self._fresh = {rs.name for rs in self.sets}  # not installed yet: flush their chains
        self._problem = OnceFilter()
        self.slow_checks = 0  # how often the listing did not show every rule

    def _listed(self, rs: RuleSet) -> bool:
        """Whether every rule of *rs* shows in the listing of its chain."""
        chains: dict[str, set[str] | None] = {}
        for rule in rs.rules:
            if rule.chain not in chains:
                chains[rule.chain] = self.ipt.listing(rule.table, rule.chain)
            lines = chains[rule.chain]
            if lines is None or rule.line() not in lines:
                return False
        return True

    def _present(self, rs: RuleSet) -> tuple[bool, list[bool]]:
        """Whether the set's chain exists, and which of its rules are there."""
        if self._listed(rs):
            return True, [True] * len(rs.rules)
        self.slow_checks += 1
        if not self.ipt.has_chain(rs.table, rs.chain):
            return False, [False] * len(rs.rules)
        return True, [self.ipt.has_rule(r) for r in rs.rules]

    def _remove_stale(self) -> None:
        rs = self._stale
        if rs is None:
            return
        chain, present = self._present(rs)
        if not (chain and any(present)):
            self._stale = None
            return
        self.ipt.apply(rs.table, remove_lines(rs, present))
        self._stale = None
        log.info(
            "iptables_rules_removed",
            set=rs.name,
            network=str(rs.network),
            subnet=str(rs.subnet),
            rules=sum(present),
            reason="the previous subnet.env names another network or subnet",
        )

    def _install(self, rs: RuleSet) -> None:
        chain, present = self._present(rs)
        fresh = rs.name in self._fresh
        if chain and all(present) and not fresh:
            return
        self.ipt.apply(rs.table, install_lines(rs, present, declare_chain=fresh or not chain))
        if fresh:
            self._fresh.discard(rs.name)
            masq = {"subnet": str(rs.subnet), "random_fully": rs.random_fully} if rs.subnet else {}
            log.info(
                "iptables_rules_installed",
                set=rs.name,
                chain=f"{rs.table} {rs.chain}",
                rules=len(rs.rules),
                network=str(rs.network),
                **masq,
                iptables=self.ipt.version,
            )
        else:
            missing = [r for r, there in zip(rs.rules, present, strict=True) if not there]
            log.info(
                "iptables_rules_restored",
                set=rs.name,
                missing=len(missing),
                first_missing=missing[0].line() if chain else f"chain {rs.table} {rs.chain}",
            )

    def ensure(self) -> bool:
        """Remove the stale set, then install each set or put back its missing rules.

        Each step is tried even if another failed (the forward rules do not wait for the nat
        table); failures are logged together, once per distinct problem, and left to the next
        call.  Returns whether everything is in place.
        """
        problems = []
        steps: list[Callable[[], None]] = [self._remove_stale]
        steps += [partial(self._install, rs) for rs in self.sets]
        for step in steps:
            try:
                step()
            except IptablesError as exc:
                problems.append(str(exc))
        if problems:
            text = "; ".join(problems)
            if self._problem.fresh(text):
                log.error("iptables_failed", error=text, action="retrying at the next check")
            return False
        if self._problem.last is not None:
            log.info("iptables_recovered", after_retries=self._problem.clear() + 1)
        return True

    def run(self, stop: threading.Event, interval: float) -> None:
        """Check every *interval* seconds until *stop* is set (the thread's body)."""
        while not stop.wait(interval):
            try:
                self.ensure()
            except Exception as exc:  # a bug must not silently end the checks: log, go on
                log.exception("iptables_error", error=str(exc))


def wanted_sets(
    opts: DaemonOptions, network: IPv4Network, subnet: IPv4Network, *, random_fully: bool
) -> list[RuleSet]:
    """The rule sets *opts* ask for, masquerade first (flanneld's order)."""
    sets = []
    if opts.ip_masq:
        sets.append(masq_rules(network, subnet, random_fully=random_fully))
    if opts.iptables_forward_rules:
        sets.append(forward_rules(network))
    return sets


def find_iptables(opts: DaemonOptions) -> Iptables | None:
    """The host's iptables if *opts* ask for rules; called before anything is leased.

    Raises:
        IptablesError: ``--ip-masq`` is asked for and iptables is not installed or does not
            run.  (Without it that is a warning: flanneld only logs it too.)
    """
    if not (opts.ip_masq or opts.iptables_forward_rules):
        return None
    try:
        return Iptables.find()
    except IptablesError as exc:
        if opts.ip_masq:
            raise IptablesError(f"--ip-masq needs iptables: {exc}") from None
        log.warning(
            "iptables_unavailable",
            error=str(exc),
            effect="no FORWARD accept rules for the overlay (--iptables-forward-rules)",
        )
        return None


def keep_rules(
    ipt: Iptables,
    opts: DaemonOptions,
    network: IPv4Network,
    subnet: IPv4Network,
    previous: tuple[IPv4Network | None, IPv4Network | None],
    stop: threading.Event,
) -> RuleKeeper:
    """Install the rules *opts* ask for and start the thread that keeps them until *stop*;
    *previous* is the (network, subnet) of the last run's subnet.env."""
    random_fully = ipt.random_fully and not opts.ip_masq_random_fully_disable
    stale = None
    old_network, old_subnet = previous
    if (
        opts.ip_masq
        and old_network is not None
        and old_subnet is not None
        and (old_network, old_subnet) != (network, subnet)
    ):
        stale = masq_rules(old_network, old_subnet, random_fully=random_fully)
    keeper = RuleKeeper(ipt, wanted_sets(opts, network, subnet, random_fully=random_fully), stale)
    keeper.ensure()
    threading.Thread(
        target=keeper.run, args=(stop, opts.iptables_resync), name="iptables", daemon=True
    ).start()
    return keeper
