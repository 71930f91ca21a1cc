"""Temperature scaling (Guo et al. 2017): one scalar T fitted on the validation split, applied to every prediction.

The head's probabilities are turned back into log-probabilities (logits up to a per-row constant, which softmax
ignores), divided by T and re-normalised; dividing by T > 0 keeps the order of a row's classes, so the argmax
(predictions, balanced accuracy, kappa, F1) never changes; only the confidence does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from mito.core.metrics import expected_calibration_error, positive_index
from mito.heads.base import HeadError

CALIBRATIONS = ("none", "temperature")
Calibration = Literal["none", "temperature"]
LOG_T_BOUNDS = (-5.0, 5.0)  # T between 0.0067 and 148
EPS = 1e-12
# Fewer validation rows than this cannot pin one temperature down (one confident mistake of a knn head's vote
# fractions alone drives the NLL optimum to the search bound); fit-head refuses --calibrate temperature below it.
MIN_CALIBRATION_ROWS = 30
BOUND_TOLERANCE = 1e-3  # |log T - bound| below this: the search stopped at its bound, not at an optimum


def _log_proba(proba: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(proba, dtype=np.float64), EPS, None))


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities rescaled by temperature T: softmax(log p / T) per row (T > 1 softens, T < 1 sharpens)."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise HeadError(f"a temperature must be a finite number > 0, not {temperature!r}")
    return softmax(_log_proba(proba) / temperature, axis=1)


def nll(yi: np.ndarray, proba: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of class indices ``yi`` under ``proba`` scaled by ``temperature``."""
    logp = log_softmax(_log_proba(proba) / temperature, axis=1)
    return float(-logp[np.arange(len(yi)), yi].mean())


def fit_temperature(yi: np.ndarray, proba: np.ndarray) -> float:
    """The T minimising the validation NLL: a bounded 1-D search over log T (scipy's minimize_scalar)."""
    yi = np.asarray(yi, dtype=np.int64)
    if len(yi) == 0:
        raise HeadError("temperature scaling needs validation rows")
    res = minimize_scalar(lambda lt: nll(yi, proba, math.exp(lt)), bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    return float(math.exp(res.x))


def at_search_bound(temperature: float) -> bool:
    """True when a fitted temperature sits on the edge of the search (T = e^-5 or e^5): the validation NLL kept
    falling towards the bound, so T is no estimate (e^5: 'the probabilities carry no information', every one ~1/k)."""
    lt = math.log(temperature)
    return min(abs(lt - LOG_T_BOUNDS[0]), abs(lt - LOG_T_BOUNDS[1])) < BOUND_TOLERANCE


def calibrate_scored(
    scored: dict[str, tuple[np.ndarray, np.ndarray]], classes: Sequence[Any], positive: Any = None
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """Fit T on ``scored['val']`` (labels, probabilities) and apply it to every split; returns the rescaled splits and
    what was done (T, NLL and ECE on validation before and after, saved in the model's config; ECE of the two-class
    ``positive`` class, as :func:`mito.core.metrics.classification_metrics`).

    A T on its search bound (or one that drives the validation NLL to 0: every row separated, T -> 0) is not applied:
    the splits come back unchanged, with ``method`` 'none' and ``skipped`` saying why (the caller warns), so a model
    is never saved with a bound-hitting temperature.
    """

    if "val" not in scored or len(scored["val"][0]) == 0:
        raise HeadError("--calibrate temperature needs validation rows (use a split with a validation part)")
    index = {c: i for i, c in enumerate(classes)}
    pos = positive_index(classes, positive) if len(classes) == 2 else 1
    y, p = scored["val"]
    yi = np.array([index[v] for v in np.asarray(y).tolist()], dtype=np.int64)
    t = fit_temperature(yi, p)
    if at_search_bound(t) or nll(yi, p, t) < 1e-9:  # the second: separated perfectly, the NLL flat at 0 before the bound
        why = (
            "the head's probabilities carry no information (T -> infinity: every probability ~1/k)"
            if t > 1
            else "the head separates them perfectly (T -> 0: every probability 0 or 1)"
        )
        return dict(scored), {
            "method": "none",
            "requested": "temperature",
            "skipped": f"temperature scaling skipped: the fitted T ({t:.4g}) runs to its search bound: on these {len(yi)} validation rows "
            f"{why}; the model is saved uncalibrated",
            "temperature_at_bound": t,
            "fitted_on": "val",
            "n_val": len(yi),
            "val_nll_before": nll(yi, p),
            "val_ece_before": expected_calibration_error(yi, p, positive=pos),
        }
    out = {name: (ys, apply_temperature(ps, t)) for name, (ys, ps) in scored.items()}
    info = {
        "method": "temperature",
        "temperature": t,
        "fitted_on": "val",
        "n_val": len(yi),
        "val_nll_before": nll(yi, p),
        "val_nll_after": nll(yi, p, t),
        "val_ece_before": expected_calibration_error(yi, p, positive=pos),
        "val_ece_after": expected_calibration_error(yi, out["val"][1], positive=pos),
    }
    return out, info


def model_temperature(config: dict[str, Any]) -> float | None:
    """The temperature saved in a model's config (None when the model is not calibrated)."""
    cal = config.get("calibration")
    if not isinstance(cal, dict) or cal.get("method") != "temperature":
        return None
    t = cal.get("temperature")
    if not isinstance(t, (int, float)) or not (t > 0 and math.isfinite(t)):
        raise HeadError(f"the model's calibration temperature is not a number > 0: {t!r}")
    return float(t)
