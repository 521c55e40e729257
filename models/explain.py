"""Why did the model give this pCTR?  The answer a person debugging a bid reads.

For a linear model the contribution of a feature is its weight (features are
0/1), so the explanation lists the largest weights by magnitude, with readable
names from the hashing module's reverse map when the name was seen recently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from models.calibration import sigmoid
from models.features import feature_name

if TYPE_CHECKING:
    from models.snapshot import ModelSnapshot


def explain_prediction(
    snapshot: ModelSnapshot, req_feats: Sequence[int], cand_feats: Sequence[int], campaign: str, creative: str, top: int = 5
) -> dict:
    """pCTR, its parts (model logit, prior blend, calibration) and the top contributing features."""
    base = snapshot.base_score(req_feats)
    pctr = snapshot.predict(base, cand_feats, campaign, creative)
    model_logit = base
    contributions: list[dict[str, Any]] = []
    for fid in dict.fromkeys((*req_feats, *cand_feats)):
        w = snapshot.weights.get(fid, 0.0)
        if fid in cand_feats:
            model_logit += w
        contributions.append({"id": fid, "name": feature_name(fid) or f"#{fid}", "weight": round(w, 6)})
    contributions.sort(key=lambda c: abs(c["weight"]), reverse=True)
    lam, offset = snapshot.blend_for(campaign, creative)
    a, b = snapshot.calibration
    return {
        "pctr": pctr,
        "model_pctr": sigmoid(model_logit),
        "bias": snapshot.bias,
        "model_logit": model_logit,
        "prior_weight": 1.0 - lam,
        "prior_ctr": sigmoid(offset / (1.0 - lam)) if lam < 1.0 else None,
        "creative_impressions": snapshot.creative_impressions(campaign, creative),
        "calibration": {"a": a, "b": b},
        "top_features": contributions[:top],
        "model_version": snapshot.version,
    }


def format_explanation(exp: dict) -> str:
    """A few lines of text for logs and the command line."""
    lines = [
        f"pCTR {exp['pctr']:.5f} (model {exp['model_pctr']:.5f}, prior weight {exp['prior_weight']:.2f}, "
        f"creative impressions {exp['creative_impressions']}, model v{exp['model_version']})"
    ]
    for c in exp["top_features"]:
        lines.append(f"  {c['weight']:+.4f}  {c['name']}")
    return "\n".join(lines)
