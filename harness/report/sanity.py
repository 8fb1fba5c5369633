"""Collapse flags: a method whose outputs left their inputs behind (a global colour cast, colours
drained to grey, lost structure, detail clipped to black or white) is flagged in every table and
never marked best.

The flags read the four sanity metrics of each benchmark (means over its images, see
``harness/metrics``): ``lab_shift`` (distance between the mean CIELAB (a*, b*) of output and input),
``colourfulness_delta`` (Hasler-Suesstrunk colourfulness, output minus input),
``luma_ssim_input`` (SSIM of the BT.601 luma of output and input) and ``clipped_delta`` (pixels
whose 8-bit luma is 0 or 255, output minus input, in percentage points).

Thresholds, set from a measurement on the 42 real hazy photos of ``shared/data/real_hazy``
(256 px, per-image values; mean / extreme over the photos):

==================  =====================  ======================  ======================
edit                lab_shift              colourfulness_delta     luma_ssim_input
==================  =====================  ======================  ======================
dark channel prior  5.2 / max 13.3         +14.3 / min 0.0         0.72 / min 0.54
contrast stretch    3.1 / max 8.1          +8.6 / min 0.0          0.92 / min 0.77
warm white balance  8.6 / max 12.0         +4.5 / min -11.9        1.00
greyscale           8.2 / max 25.5         -23.0 / min -61.6       1.00
red-orange stripes  60.6 / min 44.6        +51.0 / min +6.3        0.42 / max 0.65
==================  =====================  ======================  ======================

So a benchmark mean ``lab_shift`` above 15 CIELAB units (more than the dark channel prior's worst
single photo, about six just-noticeable differences) is a *colour cast*; ``colourfulness_delta``
below -15 is *colour drained* (dehazing restores colour, it does not remove it); and
``luma_ssim_input`` below 0.5 is *structure lost* (the prior, which raises contrast hard, stays
above 0.54 on every photo). The last row imitates the failure reported in issue 15 (every photo
turned red-orange with horizontal stripes): the luma tinted red-orange, with stripes.

``clipped_delta``, measured on the same photos by ``benchmarks/sanity_thresholds.py`` (mean / largest
over the photos): dark channel prior 0.10 / 1.24, contrast stretch 1.35 / 2.64, a black point at
20 % (shadows crushed on purpose) 3.88 / 29.9. So a benchmark mean above 5 points, about twice the
contrast stretch's worst photo, is *detail clipped*.
"""

from __future__ import annotations

from harness.report.frame import Group

CAST_LAB_SHIFT = 15.0
DRAINED_COLOURFULNESS = -15.0
STRUCTURE_SSIM = 0.5
CLIPPED_POINTS = 5.0


def collapse_reasons(group: Group, benches: list[str] | None = None) -> tuple[str, ...]:
    """Why ``group``'s outputs collapsed on any of ``benches`` (all of its benchmarks by default)."""
    reasons = []
    for bench in benches or group.benchmarks():
        shift = group.value(bench, "lab_shift").mean
        colour = group.value(bench, "colourfulness_delta").mean
        ssim = group.value(bench, "luma_ssim_input").mean
        clipped = group.value(bench, "clipped_delta").mean
        if shift is not None and shift > CAST_LAB_SHIFT:
            reasons.append(f"colour cast on {bench} (Lab shift {shift:.1f} > {CAST_LAB_SHIFT:g})")
        if colour is not None and colour < DRAINED_COLOURFULNESS:
            reasons.append(f"colour drained on {bench} (ΔColour {colour:.1f} < {DRAINED_COLOURFULNESS:g})")
        if ssim is not None and ssim < STRUCTURE_SSIM:
            reasons.append(f"structure lost on {bench} (SSIM-Y to input {ssim:.2f} < {STRUCTURE_SSIM:g})")
        if clipped is not None and clipped > CLIPPED_POINTS:
            reasons.append(f"detail clipped on {bench} (Clipped +% {clipped:.1f} > {CLIPPED_POINTS:g})")
    return tuple(reasons)


THRESHOLD_NOTE = (f"Sanity columns compare each output with its own input: Lab shift = distance of mean CIELAB "
                  f"(a*, b*) (lower = less colour cast), ΔColour = Hasler-Süsstrunk colourfulness change, "
                  f"SSIM-Y in = luma SSIM to the input (1 = structure kept), Clipped +% = pixels whose 8-bit "
                  f"luma is 0 or 255, output minus input, in percentage points (crushed shadows lower Entropy). "
                  f"A method is flagged as collapsed (never bold) when on some benchmark Lab shift > "
                  f"{CAST_LAB_SHIFT:g}, ΔColour < {DRAINED_COLOURFULNESS:g}, SSIM-Y in < {STRUCTURE_SSIM:g} or "
                  f"Clipped +% > {CLIPPED_POINTS:g}.")
