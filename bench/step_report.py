"""The ratios `step_cost.py` reports from its per-method measurements, and its one-line-per-method summary.

Ratios are of medians (`*_step`) and, where both methods were timed, the median of the within-round ratios
(`*_paired`, which cancels slow drift of the machine): naive over optimised CoCoMix, cached CoCoMix over NTP (step
time and analytic FLOPs, and the first over the second: acceptance 3 of the scale-out issue) and peak memory of
CoCoMix over NTP; a method timed with `+` options gets its step-time and memory ratio to the plain method.
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any


def ratios(m: dict[str, dict[str, float]], times: dict[str, list[float]],
           variants: dict[str, str]) -> dict[str, Any]:
    """The ratios of `m` (method -> measurements), `times` (method -> step times by round) and `variants`
    (a method with `+` options -> its plain method); None where a side was not measured."""

    def ratio(a: str, b: str, key: str) -> float | None:
        return m[a][key] / m[b][key] if key in m.get(a, {}) and key in m.get(b, {}) else None

    def paired(a: str, b: str) -> float | None:
        """Median over rounds of the two methods' step-time ratio within the round."""
        if a not in times or b not in times:
            return None
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    r: dict[str, Any] = {
        "naive_over_optimised_step": ratio("cocomix-naive", "cocomix", "step_s"),
        "naive_over_optimised_flops": ratio("cocomix-naive", "cocomix", "flops_per_token"),
        "cached_over_ntp_step": ratio("cocomix-cached", "ntp", "step_s"),
        "cached_over_ntp_flops": ratio("cocomix-cached", "ntp", "flops_per_token"),
        "cocomix_over_ntp_matched_peak_memory": ratio("cocomix", "ntp-matched", "peak_mib"),
        "cached_over_ntp_matched_peak_memory": ratio("cocomix-cached", "ntp-matched", "peak_mib"),
        "cocomix_over_ntp_peak_memory": ratio("cocomix", "ntp", "peak_mib"),
        "cached_over_ntp_peak_memory": ratio("cocomix-cached", "ntp", "peak_mib"),
    }
    r["variant_over_plain"] = {n: {"step": ratio(n, base, "step_s"), "step_paired": paired(n, base),
                                   "peak_memory": ratio(n, base, "peak_mib")} for n, base in variants.items()} or None
    r["naive_over_optimised_step_paired"] = paired("cocomix-naive", "cocomix")
    r["cached_over_ntp_step_paired"] = paired("cocomix-cached", "ntp")
    if r["cached_over_ntp_step"] and r["cached_over_ntp_flops"]:
        r["cached_time_ratio_over_flops_ratio"] = r["cached_over_ntp_step"] / r["cached_over_ntp_flops"]
        r["cached_time_ratio_over_flops_ratio_paired"] = r["cached_over_ntp_step_paired"] / r["cached_over_ntp_flops"]
    return r


def print_summary(m: dict[str, dict[str, float]], r: dict[str, Any]) -> None:
    """One line per method (time, throughput, FLOPs, memory) and the measured ratios, on stderr."""
    for n, v in m.items():
        mem = f" | peak {v['peak_mib']:.0f} MiB (step +{v['step_transient_mib']:.0f})" if "peak_mib" in v else ""
        speed = (f"{v['step_s']:.3f} s/step | {v['tokens_per_s']:.0f} tok/s | {v['flops_per_token'] / 1e6:.1f} "
                 f"MFLOP/tok | {v['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s" if "step_s" in v else "")
        print(f"{n:15s} {speed}{mem}", file=sys.stderr)
    print(json.dumps({k: v for k, v in r.items() if v is not None}), file=sys.stderr)
