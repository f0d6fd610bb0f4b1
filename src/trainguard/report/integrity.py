"""Verify the run's ledger before showing it, and say how far the check reached.

A report drawn from a rewritten ledger would lend the rewrite our authority, so the
report runs :func:`trainguard.ledger.verify_ledger` first and puts the outcome at
the top of the page:

- with the signer's public key (``--key``, or the key ``$TRAINGUARD_LEDGER_KEY``
  names), verification is complete: every entry against its hash and every signed
  tree head against its signature and root;
- without a key and with no signed heads in the ledger, every entry is checked
  against the hash its writer stored (an edit, deletion, insertion or reordering
  shows), but an editor who also rewrote the stored hashes would not show: the page
  says the ledger is unsigned;
- without a key but with signed heads, the heads cannot be checked: the page says
  so and names the key that signed them, and the command still renders.

Only tampering (or a head that does not verify) fails the report; an unsigned or
partly signed ledger is shown as a warning, like ``trainguard findings`` which does
not verify at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from cryptography.hazmat.primitives.asymmetric import ed25519

from trainguard.core.findings import Finding
from trainguard.core.keys import generate_key
from trainguard.core.progress import NULL_PROGRESS, Progress
from trainguard.ledger import SignedTreeHead, verify_ledger
from trainguard.ledger.verify import RULE_UNSIGNED, RULE_UNSIGNED_TAIL

NOT_TAMPERING: Final = frozenset({RULE_UNSIGNED, RULE_UNSIGNED_TAIL})
"""Verification findings that say how much is signed, not that anything changed."""


@dataclass(frozen=True, slots=True)
class Integrity:
    """Outcome of verifying the ledger, as the banner shows it."""

    status: str
    """``verified``, ``unsigned`` (hashes checked, no signature), ``unchecked_heads``
    (hashes checked, signed heads present but no key) or ``failed``."""
    summary: str
    """One sentence for the banner."""
    size: int = 0
    root_hex: str = ""
    heads_checked: int = 0
    covered: int = 0
    findings: tuple[Finding, ...] = field(default_factory=tuple)
    """Tampering findings (empty unless ``failed``) and low ones such as an unsigned tail."""

    @property
    def failed(self) -> bool:
        """True when the ledger was changed after it was written."""
        return self.status == "failed"


def check_ledger(
    url: str,
    public_key: ed25519.Ed25519PublicKey | None,
    head: SignedTreeHead | None,
    stored_heads: list[SignedTreeHead],
    progress: Progress = NULL_PROGRESS,
) -> Integrity:
    """Verify the ledger at ``url`` as far as the keys at hand allow.

    Raises:
        LedgerError: the ledger cannot be read, or ``public_key`` is not the signer's.
    """
    signers = sorted({h.key_id for h in stored_heads})
    key = public_key
    if key is None:
        # Hash-only check: with no heads, a throwaway key makes verify_ledger recompute
        # every leaf and classify mismatches; it then reports the ledger as unsigned.
        key = generate_key().public
    if public_key is None and (signers or head is not None):
        names = ", ".join(s[:16] for s in signers) or "(a head given with --head)"
        return Integrity(
            status="unchecked_heads",
            summary=f"The ledger holds tree heads signed by key {names}, but no public key "
            "was given: the entries and heads were NOT verified. Rerun with --key PUB.",
        )
    report = verify_ledger(url, key, head=None if public_key is None else head, progress=progress)
    tampering = tuple(f for f in report.findings if f.rule not in NOT_TAMPERING)
    # With the throwaway key, "unsigned" says nothing about the ledger: drop it.
    rest = tuple(
        f
        for f in report.findings
        if f.rule in NOT_TAMPERING and (public_key is not None or f.rule != RULE_UNSIGNED)
    )

    def outcome(status: str, summary: str, findings: tuple[Finding, ...]) -> Integrity:
        return Integrity(
            status=status,
            summary=summary,
            size=report.size,
            root_hex=report.root_hex,
            heads_checked=report.heads_checked,
            covered=report.covered,
            findings=findings,
        )

    if tampering:
        return outcome(
            "failed",
            f"The ledger FAILED verification: {len(tampering)} problem(s); entries were "
            "changed, removed, inserted or reordered after they were written. What follows "
            "cannot be trusted.",
            tampering + rest,
        )
    if public_key is None or any(f.rule == RULE_UNSIGNED for f in rest):
        return outcome(
            "unsigned",
            f"All {report.size} entries match the hashes their writers stored, but no "
            "signed tree head covers them, so a rewrite that also replaced the hashes would "
            "not show. Sign heads with $TRAINGUARD_LEDGER_KEY and pass --key.",
            (),
        )
    tail = ""
    if report.covered < report.size:
        tail = f"; entries {report.covered + 1}..{report.size} are not yet covered by a signed head"
    return outcome(
        "verified",
        f"Ledger verified: {report.size} entries, {report.heads_checked} signed "
        f"head(s) checked{tail}.",
        rest,
    )
