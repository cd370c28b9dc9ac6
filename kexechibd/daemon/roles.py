"""Which kernel the daemon runs in (DESIGN §1): a pure function of the kernel
command line, the state of the image at the configured location and this
boot's id.

The rule, in order:

1. ``kexechib.role=save`` on the command line → **saver** (B).  Purgatory
   appends ``kexec_jump_back_entry=0x…``; without a valid one B cannot reach
   A again, so the decision carries ``problem`` and the daemon refuses to
   save (it reports the problem instead of acting as an origin: this is not
   the user's system).
2. ``kexec_jump_back_entry=`` *without* ``kexechib.role=save`` → **origin**:
   some other kexec-jump user booted this kernel; it is not ours to save.
3. A **valid** (committed) image whose ``boot_id`` differs from this boot's
   → **restorer** (C): it holds some earlier A that has not been resumed.
4. Otherwise → **origin** (A).  This includes a valid image made by *this*
   boot (a checkpoint: B saved A and jumped back, and the daemon was
   restarted since), a consumed image (invalidated after its resume), an
   invalid one (partial, corrupt, foreign — the reason is logged) and none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from kexechibd.engine import ImageVerdict, Role

ROLE_PARAM = "kexechib.role"
ROLE_SAVE = "save"
JUMP_BACK_PARAM = "kexec_jump_back_entry"

_HEX = re.compile(r"0[xX][0-9a-fA-F]{1,16}")


def parse_cmdline(cmdline: str) -> dict[str, str | None]:
    """Kernel command-line parameters as the kernel splits them: on
    whitespace, with double quotes protecting spaces; ``key`` alone maps to
    None; the last occurrence wins."""
    params: dict[str, str | None] = {}
    word: list[str] = []
    quoted = False
    started = False
    for ch in cmdline + " ":
        if ch == '"':
            quoted = not quoted
            started = True
        elif ch.isspace() and not quoted:
            if started:
                text = "".join(word)
                key, eq, value = text.partition("=")
                params[key] = value if eq else None
            word, started = [], False
        else:
            word.append(ch)
            started = True
    return params


@dataclass(frozen=True)
class ImageState:
    """The image at the configured location, as far as role detection cares."""

    verdict: ImageVerdict
    boot_id: str = ""
    reason: str = ""

    @classmethod
    def from_inspect(cls, info: Mapping[str, object]) -> ImageState:
        """From ``Engine.inspect``'s result; anything unexpected is INVALID."""
        raw = info.get("verdict")
        try:
            verdict = ImageVerdict(raw)
        except ValueError:
            return cls(ImageVerdict.INVALID, reason=f"inspect gave no usable verdict ({raw!r})")
        boot_id = info.get("boot_id", "")
        reason = info.get("reason", "")
        return cls(
            verdict,
            boot_id if isinstance(boot_id, str) else "",
            reason if isinstance(reason, str) else "",
        )


@dataclass(frozen=True)
class RoleDecision:
    role: Role
    reason: str
    # B only: A's re-entry point from the command line (None when missing).
    jump_back_entry: int | None = None
    # Set when the role is certain but the daemon cannot do its job in it.
    problem: str = ""


def detect_role(cmdline: str, image: ImageState, boot_id: str) -> RoleDecision:
    params = parse_cmdline(cmdline)
    entry_text = params.get(JUMP_BACK_PARAM)
    entry = int(entry_text, 16) if entry_text and _HEX.fullmatch(entry_text) else None
    if params.get(ROLE_PARAM) == ROLE_SAVE:
        if entry is None:
            shown = "missing" if entry_text is None else f"{entry_text!r} is not a hex address"
            return RoleDecision(
                Role.SAVER,
                f"{ROLE_PARAM}={ROLE_SAVE} on the command line",
                problem=(
                    f"{JUMP_BACK_PARAM}= is {shown}: purgatory did not hand over A's re-entry "
                    "point, so A cannot be saved or jumped back to from here"
                ),
            )
        return RoleDecision(
            Role.SAVER,
            f"{ROLE_PARAM}={ROLE_SAVE} and {JUMP_BACK_PARAM}={entry:#x} on the command line",
            jump_back_entry=entry,
        )
    if entry_text is not None:
        return RoleDecision(
            Role.ORIGIN,
            f"{JUMP_BACK_PARAM}= without {ROLE_PARAM}={ROLE_SAVE}: not a kexechib saver",
        )
    if image.verdict is ImageVerdict.VALID:
        if image.boot_id and image.boot_id == boot_id:
            return RoleDecision(
                Role.ORIGIN, "the valid image was made by this boot (a checkpoint)"
            )
        return RoleDecision(Role.RESTORER, "a valid image of an earlier boot awaits resume")
    if image.verdict is ImageVerdict.ABSENT:
        return RoleDecision(Role.ORIGIN, "no image")
    detail = f": {image.reason}" if image.reason else ""
    return RoleDecision(Role.ORIGIN, f"the image is {image.verdict.value}{detail}")
