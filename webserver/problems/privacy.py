"""A problem's privacy requirement: the differential privacy every site must apply (issue 18).

The problem setter may require a minimum noise: every site then clips its update and adds
Gaussian noise with at least `min_noise_multiplier` (noise std per coordinate = multiplier
× 2 × clipping norm; the 2 because a site's whole clipped update may be replaced), even a
site whose data holder set no budget of their own. `clipping_norm` and `delta` are the
defaults a site uses unless it sets its own. The client applies it and accounts the
spending (client_image/); the website only validates, stores, shows and hands it out in
join bundles. Every problem is reported at once, each under the key at fault, in the words
the run config uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedota_common.privacy_rules import BOUNDS, KEYS, unknown_keys, valid
from webserver.errors import ApplicationError


class PrivacyError(ApplicationError):
    """The privacy requirement is invalid; `errors` maps each key to its problems."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        lines = [msg for msgs in errors.values() for msg in msgs]
        super().__init__("invalid privacy requirement: " + "; ".join(lines), field=None, extra={"privacy": errors})


def validate_privacy(doc: Mapping[str, Any] | None) -> dict[str, float]:
    """The normalised requirement (only the keys given, as floats; {} = none), or PrivacyError."""
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise PrivacyError(
            {"privacy": [f"the privacy requirement must be an object of {', '.join(KEYS)}; got {type(doc).__name__}"]}
        )
    errors: dict[str, list[str]] = {}
    out: dict[str, float] = {}
    for key in unknown_keys(doc):
        errors.setdefault(key, []).append(
            f"unknown setting {key!r}; the privacy requirement accepts: {', '.join(KEYS)}"
        )
    for key in KEYS:
        if key not in doc:
            continue
        value = doc[key]
        if not valid(key, value):
            errors.setdefault(key, []).append(f"{key} must be {BOUNDS[key]}; got {value!r}")
            continue
        out[key] = float(value)
    if errors:
        raise PrivacyError(errors)
    return out


def _number(value: float) -> str:
    """1.1 -> "1.1", 1e-05 -> "1e-5"."""
    text = f"{value:g}"
    mantissa, sep, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if sep else text


def format_number(value: float | None) -> str:
    """A reported ε, δ, multiplier or norm as pages show it: 3 decimals at most, tiny ones as 1e-5."""
    if value is None:
        return "–"
    if value != 0 and abs(value) < 1e-3:
        return _number(value)
    return f"{value:.3f}".rstrip("0").rstrip(".")


def privacy_sentence(doc: Mapping[str, Any] | None) -> str:
    """The requirement in words, as the problem page and the join panel say it."""
    doc = doc or {}
    if not doc:
        return "No privacy requirement: each site decides."
    parts: list[str] = []
    if "min_noise_multiplier" in doc:
        parts.append(
            f"Sites must add Gaussian noise with multiplier ≥ {_number(doc['min_noise_multiplier'])} "
            "(every site applies differential privacy, even one whose data holder set no budget)"
        )
    else:
        parts.append("No minimum noise: differential privacy applies only at sites whose data holder sets a budget")
    if "clipping_norm" in doc:
        parts.append(f"clip updates to L2 norm {_number(doc['clipping_norm'])} unless a site sets its own")
    if "delta" in doc:
        parts.append(f"ε reported at δ = {_number(doc['delta'])} unless a site sets its own")
    return "; ".join(parts) + "."
