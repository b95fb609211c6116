"""OpenTuner (Ansel et al. 2014) driving the subnet search through its Python API (paper Sec. III).

``opentuner.api.TuningRunManager`` proposes configurations of a
``ConfigurationManipulator`` (a ``BooleanParameter`` per prunable block, an
``EnumParameter`` of mlp_dim_choices per elastic block); each is canonicalised to a
subnet, evaluated once through :class:`SearchState` (cached results are
reported back too) and its score reported as the ``time`` OpenTuner minimises.

Containment of OpenTuner's global side effects:
- importing ``opentuner.tuningrunmain`` replaces ``logging.Formatter``; it is
  restored right after import, and OpenTuner's ``init_logging`` (a
  ``dictConfig`` adding a console handler and ``./opentuner.log``) is made a
  no-op. During a run the ``opentuner`` logger writes only to
  ``<workdir>/opentuner.log``.
- results go to an SQLite database of this run's own, in a new temporary folder
  removed afterwards: two searches never share (or delete) each other's
  database, and the output path's characters never enter its URL.
- Python/NumPy global RNG states are seeded for the run and restored after.
- the default AUC-bandit ensemble is re-registered as ``SupersamBanditA`` with
  a differential evolution whose parent order does not depend on object ids or
  wall-clock timestamps, so the same seed reproduces the same search.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import random
import shutil
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from supersam.stages.search.encoding import BOOL, SubnetEncoding
from supersam.stages.search.objective import SearchState

log = logging.getLogger(__name__)

TECHNIQUE = "SupersamBanditA"
MAX_STALLS = 500  # consecutive proposals without a new subnet before stopping


@functools.cache
def _opentuner() -> SimpleNamespace:
    """Import OpenTuner once, undoing its import-time logging changes."""
    saved_formatter = logging.Formatter
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    import opentuner
    from opentuner import tuningrunmain
    from opentuner.api import TuningRunManager
    from opentuner.measurement.inputmanager import FixedInputManager
    from opentuner.measurement.interface import DefaultMeasurementInterface
    from opentuner.resultsdb.models import Result
    from opentuner.search import manipulator as manip
    from opentuner.search.objective import MinimizeTime

    logging.Formatter = getattr(tuningrunmain, "_OldFormatter", saved_formatter)
    tuningrunmain.init_logging = lambda: None
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)

    class Interface(DefaultMeasurementInterface):
        def save_final_config(self, configuration) -> None:  # no "final configuration" log
            return None

    _register_technique()
    return SimpleNamespace(
        opentuner=opentuner,
        TuningRunManager=TuningRunManager,
        FixedInputManager=FixedInputManager,
        Interface=Interface,
        Result=Result,
        manip=manip,
        MinimizeTime=MinimizeTime,
    )


def _register_technique() -> None:
    from opentuner.search import differentialevolution as de
    from opentuner.search import evolutionarytechniques, simplextechniques, technique
    from opentuner.search.bandittechniques import AUCBanditMetaTechnique

    clock = itertools.count()

    class Member(de.PopulationMember):
        def __init__(self, config, submitted=True):
            super().__init__(config, submitted)
            self.timestamp = next(clock)

        def touch(self):
            self.timestamp = next(clock)

    class OrderedDE(de.DifferentialEvolutionAlt):
        """DifferentialEvolutionAlt with id- and time-independent parent order."""

        def initial_population(self):
            self.population = [
                Member(self.driver.get_configuration(self.manipulator.random()), submitted=False)
                for _ in range(self.population_size)
            ]

        def create_new_configuration(self, parent):
            cfg = self.manipulator.copy(parent.config.data)
            cfg_params = self.manipulator.proxy(cfg)
            pool = [m for m in self.population if m is not parent]
            if self.driver.best_result:
                pool += [Member(self.driver.best_result.configuration)] * self.information_sharing
            random.shuffle(pool)
            x1, x2, x3 = (m.config.data for m in pool[:3])
            use_f = random.random() / 2.0 + 0.5
            names = self.manipulator.param_names(cfg, x1, x2, x3)
            random.shuffle(names)
            for i, k in enumerate(names):
                if i < self.n_cross or random.random() < self.cr:
                    cfg_params[k].op4_set_linear(x1, x2, x3, 1.0, use_f, -use_f)
            return cfg

    technique.register(
        AUCBanditMetaTechnique(
            [
                OrderedDE(),
                evolutionarytechniques.UniformGreedyMutation(),
                evolutionarytechniques.NormalGreedyMutation(mutation_rate=0.3),
                simplextechniques.RandomNelderMead(),
            ],
            name=TECHNIQUE,
        )
    )


def _manipulator(ot: SimpleNamespace, encoding: SubnetEncoding):
    m = ot.manip.ConfigurationManipulator()
    for name, options in encoding.parameters():
        if options == BOOL:
            m.add_parameter(ot.manip.BooleanParameter(name))
        else:
            m.add_parameter(ot.manip.EnumParameter(name, list(options)))
    return m


@contextlib.contextmanager
def _contained(workdir: Path, seed: int):
    """OpenTuner's logger to ``workdir/opentuner.log`` only; seeded, restored RNGs."""
    logger = logging.getLogger("opentuner")
    saved = (logger.level, logger.propagate, random.getstate(), np.random.get_state())
    handler = logging.FileHandler(workdir / "opentuner.log", mode="w")
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SQLAlchemy 2.x SAWarnings from OpenTuner's ORM use
            yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        random.setstate(saved[2])
        np.random.set_state(saved[3])


def _args(ot: SimpleNamespace, database: Path, label: str):
    args = ot.opentuner.default_argparser().parse_args([])
    args.database = f"sqlite:///{database.resolve()}"
    args.label = label
    args.technique = [TECHNIQUE]
    args.no_dups = True
    args.quiet = True
    return args


def run_opentuner(
    encoding: SubnetEncoding, state: SearchState, seed: int, workdir: str | Path, label: str = "supersam-search"
) -> None:
    """Search with OpenTuner until ``state`` is done (budget, time or space exhausted).

    Args:
        encoding: the searched parameters and their decoding to subnets.
        state: memoised evaluation, budget and results.
        seed: seeds ``random`` and ``numpy.random`` for OpenTuner's techniques.
        workdir: folder for ``opentuner.log`` (created); the database is a temporary one of this run.
    """
    ot = _opentuner()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="supersam-opentuner-"))
    database = scratch / "opentuner.db"
    try:
        _run(ot, encoding, state, seed, workdir, database, label)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(
    ot: SimpleNamespace,
    encoding: SubnetEncoding,
    state: SearchState,
    seed: int,
    workdir: Path,
    database: Path,
    label: str,
) -> None:
    with _contained(workdir, seed):
        interface = ot.Interface(
            args=_args(ot, database, label),
            manipulator=_manipulator(ot, encoding),
            objective=ot.MinimizeTime(),
            input_manager=ot.FixedInputManager(),
            project_name="supersam",
            program_name="subnet-search",
            program_version="1",
        )
        manager = ot.TuningRunManager(interface, interface.args)
        try:
            _loop(ot, manager, encoding, state)
        finally:
            if manager.get_best_result() is not None:
                manager.finish()
            else:
                manager.session.close()
            manager.engine.dispose()


def _loop(ot: SimpleNamespace, manager, encoding: SubnetEncoding, state: SearchState) -> None:
    stalls = 0
    while not state.done():
        desired = manager.get_next_desired_result()
        if desired is None:
            stalls += 1
        else:
            subnet = encoding.decode(desired.configuration.data)
            stalls = stalls + 1 if state.seen(subnet) else 0
            cand = state.evaluate(subnet)
            manager.report_result(
                desired, ot.Result(time=cand.score, accuracy=cand.miou, size=float(cand.params), state="OK")
            )
        if stalls >= MAX_STALLS:
            log.info(
                "OpenTuner proposed no new subnet %d times in a row; stopping after %d evaluations",
                stalls,
                state.n_evaluations,
            )
            return
