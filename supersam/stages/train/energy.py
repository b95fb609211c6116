"""Energy meter for training runs (paper Table I: kWh, kg CO2e).

Tries, in order: NVML GPU energy counters (``nvml``, CUDA only), then
codecarbon's offline tracker, which reads Intel RAPL where the powercap files
are readable (``rapl``) and otherwise uses its CPU power model (TDP and CPU
load, plus RAM; ``estimate``), and as a last resort CPU TDP x wall time (also
``estimate``). :attr:`EnergyMeter.detail` names the source and codecarbon's
hardware (``codecarbon 3.3.2: CPU(Intel Rapl), RAM(...)``). CO2 is energy times
an emission factor (paper: 0.437 kg CO2e/kWh).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

J_PER_KWH = 3.6e6


class _NvmlSource:
    """Sum of NVML total-energy counters (mJ) of the visible GPUs."""

    method = "nvml"

    def __init__(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        ids = [int(x) for x in visible.split(",") if x.strip().isdigit()] if visible else []
        ids = ids or list(range(torch.cuda.device_count()))
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in ids]
        self._start = [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles]
        self.detail = f"nvml: {len(self._handles)} GPU(s)"

    def joules(self) -> float:
        now = [self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles]
        return sum(n - s for n, s in zip(now, self._start)) / 1000.0

    def stop(self) -> None:
        self._nvml.nvmlShutdown()


def codecarbon_method(hardware: list) -> str:
    """``rapl`` when one of codecarbon's CPU trackers reads Intel RAPL, else ``estimate``."""
    return "rapl" if any(getattr(h, "_mode", "") == "intel_rapl" for h in hardware) else "estimate"


class _CodecarbonSource:
    """codecarbon's OfflineEmissionsTracker (RAPL where readable, else its CPU + RAM model), no files written."""

    def __init__(self, country_iso_code: str, output_dir: str | Path | None) -> None:
        from codecarbon import OfflineEmissionsTracker

        logging.getLogger("codecarbon").setLevel(logging.ERROR)

        kwargs = {}
        if output_dir:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            kwargs["output_dir"] = str(output_dir)
        # We measure at every training/evaluation boundary ourselves (joules()); the
        # tracker's background scheduler would measure concurrently from its own thread
        # and could count one interval twice, so it is left at a 10-minute period.
        self._tracker = OfflineEmissionsTracker(
            country_iso_code=country_iso_code,
            log_level="error",
            output_methods=[],
            allow_multiple_runs=True,
            measure_power_secs=600,
            **kwargs,
        )
        self._tracker.start()
        self.joules()  # fail now (not mid-run) if the internals moved
        import codecarbon

        hardware = list(getattr(self._tracker, "_hardware", []))
        self.method = codecarbon_method(hardware)
        self.detail = f"codecarbon {codecarbon.__version__}: {', '.join(map(repr, hardware)) or 'offline estimate'}"

    def joules(self) -> float:
        # measure now (not only when 50 ms stale): training and evaluation spans are told apart
        self._tracker._measure_power_and_energy_if_stale(min_interval_s=0.0)
        return float(self._tracker._total_energy.kWh) * J_PER_KWH

    def stop(self) -> None:
        self._tracker.stop()


class _TdpSource:
    """CPU TDP x wall time (the cruder estimate when codecarbon is unusable)."""

    method = "estimate"

    def __init__(self, watts: float, reason: str) -> None:
        self._watts = watts
        self._t0 = time.perf_counter()
        self.detail = f"cpu_tdp_x_time ({watts:g} W; codecarbon unusable: {reason})"

    def joules(self) -> float:
        return self._watts * (time.perf_counter() - self._t0)

    def stop(self) -> None:
        pass


class EnergyMeter:
    """Cumulative energy since :meth:`start`, by the best available method.

    Args:
        device: the training device; NVML is tried only for CUDA.
        country_iso_code: country for codecarbon's offline estimate (e.g. ``USA``).
        emission_factor: kg CO2e per kWh for :meth:`co2_kg` (paper: 0.437).
        cpu_tdp_watts: CPU power for the TDP x time fallback, in W.
        output_dir: where codecarbon may put files (never the repository).

    Attributes:
        method: ``nvml``, ``rapl`` or ``estimate`` (the ``energy_method`` tag).
        detail: human-readable source (``codecarbon 3.3.2: CPU(...), RAM(...)``, ``cpu_tdp_x_time ...``).
    """

    def __init__(
        self,
        device: torch.device,
        country_iso_code: str = "USA",
        emission_factor: float = 0.437,
        cpu_tdp_watts: float = 65.0,
        output_dir: str | Path | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.country_iso_code = country_iso_code
        self.emission_factor = emission_factor
        self.cpu_tdp_watts = cpu_tdp_watts
        self.output_dir = output_dir
        self._source = None
        self._final: float | None = None

    @property
    def method(self) -> str:
        return self._source.method if self._source else "none"

    @property
    def detail(self) -> str:
        return self._source.detail if self._source else "not started"

    def start(self) -> EnergyMeter:
        """Pick the first working source and start counting (idempotent)."""
        if self._source is not None:
            return self
        attempts = []
        if self.device.type == "cuda":
            attempts.append(_NvmlSource)
        attempts.append(lambda: _CodecarbonSource(self.country_iso_code, self.output_dir))
        reason = ""
        for make in attempts:
            try:
                self._source = make()
                break
            except Exception as exc:  # noqa: BLE001 - any failure means "try the next source"
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
                log.debug("energy source unavailable: %s", reason)
        if self._source is None:
            self._source = _TdpSource(self.cpu_tdp_watts, reason)
        log.info("energy measured by %s", self._source.detail)
        return self

    def kwh(self) -> float:
        """Energy since :meth:`start` in kWh (also polls wrap-around counters)."""
        if self._final is not None:
            return self._final
        return self._source.joules() / J_PER_KWH if self._source else 0.0

    def co2_kg(self, kwh: float) -> float:
        """kg CO2e for ``kwh`` at the configured emission factor."""
        return kwh * self.emission_factor

    def stop(self) -> float:
        """Stop the source; returns the final energy in kWh."""
        if self._source is None or self._final is not None:
            return self._final or 0.0
        value = self.kwh()
        self._source.stop()
        self._final = value
        return value
