"""The serving model: an immutable, fast scorer frozen from the learner.

The bid path holds one ModelSnapshot and swaps in a new one atomically (a
single attribute assignment), so it never sees a half-updated model and never
takes a lock.  Scoring is split in two so the per-candidate cost stays small:
`base_score` sums the request-level weights once per impression, `predict`
adds the few candidate weights, blends with the cold-start prior and applies
the calibration, all precomputed into plain dicts and floats.

Serialised form: orjson + zlib, never pickle, so a snapshot read from a topic
or a file cannot run code.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson

from bidder.slices import Steps, drain
from models.calibration import logit
from models.features import HASH_MASK
from models.prior import DECODE_STEP, ClickCounts, CreativeKey, PriorConfig

FORMAT = 1
_CLIP = 30.0
# No learner makes a logit term this large (scores are clipped at ±30): a snapshot holding one is refused.  Bounding
# the terms also bounds float rounding: the bid path sums them in another order than `predict`, and with terms up to
# this size the two sums differ by far less than the price bound's margin (bidder.scoring), where terms of 1e17 that
# cancel would differ by whole units.
MAX_TERM = 1e4
# The largest document a snapshot or learner state may inflate to.  A model over the whole id space with tens of
# thousands of creatives is about 30 MiB of JSON; a few kilobytes of zlib can inflate to gigabytes, and a bidder or
# worker must refuse such a record rather than run out of memory on it.
MAX_DOCUMENT_BYTES = 256 * 1024 * 1024


class ModelSnapshot:
    """Frozen weights + prior blend table + calibration; what the bid path scores with."""

    __slots__ = ("version", "n_seen", "bias", "weights", "calibration", "logit_shift", "counts", "_blend", "_campaign_blend",
                 "_default_blend", "_dense")

    def __init__(
        self,
        version: int,
        weights: dict[int, float],
        bias: float,
        counts: ClickCounts,
        calibration: tuple[float, float] = (1.0, 0.0),
        logit_shift: float = 0.0,
        n_seen: int = 0,
        blends: dict[CreativeKey, tuple[float, float]] | None = None,
    ) -> None:
        """`blends`: `counts.blends()`, when the caller has them already (`from_dict_steps` computes them in steps)."""
        self.version = version
        self.n_seen = n_seen
        self.weights = weights
        self.bias = bias
        self.counts = counts
        self.calibration = calibration
        self.logit_shift = logit_shift  # the learner's fixed offset: logit(prior CTR) + log(negative rate)
        self._blend: dict[CreativeKey, tuple[float, float]] = counts.blends() if blends is None else blends
        # a creative not counted yet: the prior alone, as `counts.blend` gives it (the model alone with blending off)
        lam = 0.0 if counts.config.blend_impressions > 0 else 1.0
        self._campaign_blend = {c: (lam, (1.0 - lam) * logit(counts.campaign_rate(c))) for c in counts.campaigns}
        self._default_blend = (lam, (1.0 - lam) * logit(counts.global_rate()))
        self._dense: np.ndarray | None = None

    def dense_weights(self) -> np.ndarray:
        """The weights as one array over the whole id space (0 where absent), for scoring many candidates at once.

        Ids outside the space are left out: no feature function produces them, so no lookup could find them.
        Built once per snapshot (8 MiB) and read-only.
        """
        if self._dense is None:
            dense = np.zeros(HASH_MASK + 1)
            ids = np.fromiter(self.weights.keys(), dtype=np.int64, count=len(self.weights))
            ws = np.fromiter(self.weights.values(), dtype=np.float64, count=len(self.weights))
            inside = (ids >= 0) & (ids <= HASH_MASK)
            dense[ids[inside]] = ws[inside]
            dense.flags.writeable = False
            self._dense = dense
        return self._dense

    # -- scoring ------------------------------------------------------------------------

    def base_score(self, req_feats: Sequence[int]) -> float:
        """Bias + sum of the request-level weights: computed once per impression."""
        get = self.weights.get
        z = self.bias + self.logit_shift
        for f in req_feats:
            z += get(f, 0.0)
        return z

    def blend_for(self, campaign: str, creative: str) -> tuple[float, float]:
        """(lam, offset) of the cold-start blend: logit = lam * model + offset."""
        b = self._blend.get((campaign, creative))
        if b is None:
            b = self._campaign_blend.get(campaign, self._default_blend)
        return b

    def raw_logit(self, base: float, cand_feats: Sequence[int], campaign: str, creative: str) -> float:
        """Blended logit before calibration."""
        get = self.weights.get
        z = base
        for f in cand_feats:
            z += get(f, 0.0)
        b = self._blend.get((campaign, creative))
        if b is None:
            b = self._campaign_blend.get(campaign, self._default_blend)
        return b[0] * z + b[1]

    def predict(self, base: float, cand_feats: Sequence[int], campaign: str, creative: str) -> float:
        """Calibrated pCTR of one candidate, given the request's base score."""
        get = self.weights.get
        z = base
        for f in cand_feats:
            z += get(f, 0.0)
        b = self._blend.get((campaign, creative))
        if b is None:
            b = self._campaign_blend.get(campaign, self._default_blend)
        a, c = self.calibration
        s = a * (b[0] * z + b[1]) + c
        if s > _CLIP:
            s = _CLIP
        elif s < -_CLIP:
            s = -_CLIP
        return 1.0 / (1.0 + math.exp(-s))

    def creative_beta(self, campaign: str, creative: str) -> tuple[float, float]:
        """Beta posterior of a creative's CTR (for exploration)."""
        return self.counts.creative_beta(campaign, creative)

    def creative_impressions(self, campaign: str, creative: str) -> int:
        return self.counts.creative_impressions(campaign, creative)

    def explain(self, req_feats: Sequence[int], cand_feats: Sequence[int], campaign: str, creative: str, top: int = 5) -> dict:
        """pCTR and the features that moved it most, with readable names where known."""
        from models.explain import explain_prediction

        return explain_prediction(self, req_feats, cand_feats, campaign, creative, top)

    # -- construction and storage ---------------------------------------------------------

    @classmethod
    def empty(cls, prior_ctr: float = 0.001) -> ModelSnapshot:
        """A snapshot that knows nothing: every candidate scores prior_ctr."""
        return cls(version=0, weights={}, bias=0.0, counts=ClickCounts(PriorConfig(prior_ctr=prior_ctr)))

    def to_dict(self) -> dict:
        ids = list(self.weights)
        return {
            "format": FORMAT,
            "version": self.version,
            "n_seen": self.n_seen,
            "bias": self.bias,
            "ids": ids,
            "weights": [self.weights[i] for i in ids],
            "calibration": list(self.calibration),
            "logit_shift": self.logit_shift,
            "counts": self.counts.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModelSnapshot:
        """ValueError naming the problem for a snapshot a bidder must not score with: a foreign format, feature ids
        outside the hash space, a number that is not finite, impossible counts."""
        return drain(cls.from_dict_steps(d))

    @classmethod
    def from_dict_steps(cls, d: dict, step: int = DECODE_STEP) -> Steps[ModelSnapshot]:
        """`from_dict`, pausing every `step` weights or counts: with thousands of campaigns a model takes tens of
        milliseconds to check and build, and a bidder decodes one about every second, between bids."""
        if not isinstance(d, dict) or d.get("format") != FORMAT or type(d.get("format")) is not type(FORMAT):
            # a foreign document can be megabytes long: name it, never echo it into the log
            found = repr(d.get("format")) if isinstance(d, dict) else f"(a JSON {type(d).__name__}, not an object)"
            raise ValueError(f"unsupported model snapshot format {found:.60}")
        try:
            ids, ws = d["ids"], d["weights"]
            if len(ids) != len(ws):
                raise ValueError("mismatched ids and weights")
            a, b = d["calibration"]
            others = [d["bias"], a, b, d["logit_shift"]]
            weights: dict[int, float] = {}
            for lo in range(0, len(ids), step):
                part_ids, part_ws = ids[lo:lo + step], ws[lo:lo + step]
                if not all(type(i) is int and 0 <= i <= HASH_MASK for i in part_ids):
                    raise ValueError(f"a feature id outside 0..{HASH_MASK}")
                _check_numbers(part_ws)
                weights.update(zip(part_ids, map(float, part_ws), strict=True))
                yield
            _check_numbers(others)
            if a < 0:  # a falling calibration would rank every candidate in reverse: the worst traffic bid highest
                raise ValueError(f"calibration slope {a!r} is negative")
            if not all(type(d[k]) is int and d[k] >= 0 for k in ("version", "n_seen")):
                raise ValueError("version and n_seen must be non-negative integers")
            counts = yield from ClickCounts.from_dict_steps(d["counts"], step)
            blends = yield from counts.blends_steps(step)
            return cls(
                version=int(d["version"]),
                weights=weights,
                bias=float(d["bias"]),
                counts=counts,
                calibration=(float(a), float(b)),
                logit_shift=float(d["logit_shift"]),
                n_seen=int(d["n_seen"]),
                blends=blends,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a usable model snapshot: {e}") from None

    def to_bytes(self) -> bytes:
        return zlib.compress(orjson.dumps(self.to_dict()), 6)

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelSnapshot:
        return drain(cls.from_bytes_steps(data))

    @classmethod
    def from_bytes_steps(cls, data: bytes) -> Steps[ModelSnapshot]:
        """`from_bytes` in steps (`bidder.slices`); the decompression and the JSON parse are one step."""
        try:
            doc = orjson.loads(inflate(data))
        except (zlib.error, orjson.JSONDecodeError, TypeError) as e:  # TypeError: not bytes at all
            raise ValueError(f"not a model snapshot (zlib-compressed JSON): {e}") from None
        yield
        return (yield from cls.from_dict_steps(doc))

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename) so a reader never loads half a model."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(self.to_bytes())
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> ModelSnapshot:
        return cls.from_bytes(Path(path).read_bytes())

    def __repr__(self) -> str:
        return f"ModelSnapshot(version={self.version}, n_seen={self.n_seen}, weights={len(self.weights)})"


def inflate(data: bytes) -> bytes:
    """zlib-decompress a whole stream of at most MAX_DOCUMENT_BYTES; zlib.error for a larger or truncated one."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, MAX_DOCUMENT_BYTES + 1)
    if len(out) > MAX_DOCUMENT_BYTES:
        raise zlib.error(f"inflates to more than {MAX_DOCUMENT_BYTES // 2**20} MiB")
    if not inflater.eof:
        raise zlib.error("incomplete or truncated stream")
    return out


def _check_numbers(xs: Sequence[object]) -> None:
    """Every weight and term a bidder adds up: a finite number within ±MAX_TERM."""
    if not all(type(x) in (int, float) and math.isfinite(x) for x in xs):  # type: ignore[arg-type]
        raise ValueError("a weight, the bias, the calibration or the logit shift is not a finite number")
    if not all(-MAX_TERM <= x <= MAX_TERM for x in xs):  # type: ignore[operator]
        raise ValueError(f"a weight, the bias, the calibration or the logit shift is beyond ±{MAX_TERM:g}")
