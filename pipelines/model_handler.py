"""The language model inside Beam: our own RunInference ModelHandler around the core's
:class:`toolformer.augment_model.AugmentModel` (the same object ``augment_texts`` uses in-process).

``apache_beam.ml.inference.huggingface_inference`` does not import under transformers 5 (it
imports TensorFlow classes), so this is a small handler of our own. RunInference loads one
:class:`AugmentModel` per worker process (or, with ``large_model=True``, one per machine shared
across processes through ``multi_process_shared``: then every call goes through a proxy, which is
why :class:`AugmentModel`'s methods take and return plain picklable data only). Batches are
formed by a token budget, not an element count. Used by ``pipelines/augment.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

# re-exported: the model side of the method lives in the core (toolformer/augment_model.py)
from toolformer.augment_model import LOSS_DECIMALS, AugmentModel, ModelPlan, token_classes, unit_tokens  # noqa: F401
from toolformer.progress import Throttle, progress_text

PROGRESS_EVERY_S = 15.0
log = logging.getLogger(__name__)
progress_log = logging.getLogger("toolformer.progress")  # `toolformer augment` shows it at INFO
PROGRESS_NAMESPACE = "toolformer_progress"  # not stats.json's "toolformer": never in a run's counts


def units_so_far(task: str, done: int) -> int | None:
    """This worker's units so far for ``task``: ``done`` plus those routed (sample) or executed,
    i.e. sampled with candidates (filter), in the current bundle but not yet through the task.

    Read from the Beam counters of the steps fused with the model in the current bundle (Route's
    ``windows:*``, Execute's ``time_ms:execute`` count, this handler's ``units_done:*``), through
    the SDK harness's state sampler (not a public Beam API: None wherever it cannot be read, or
    where Route runs in an earlier stage, e.g. on a resumed part).
    """
    try:
        from apache_beam.runners.worker import statesampler

        states = getattr(statesampler.get_current_tracker(), "_states_by_name", None) or {}
        containers = {id(s.metrics_container): s.metrics_container for s in list(states.values())}
        arrived = passed = 0
        for container in containers.values():
            if container is None:
                continue
            got = container.get_cumulative()
            for key, n in got.counters.items():
                ns, name = key.metric.namespace, key.metric.name
                if task == "sample" and ns == "toolformer" and name.startswith("windows:"):
                    arrived += n
                elif ns == PROGRESS_NAMESPACE and name == f"units_done:{task}":
                    passed += n
            if task == "filter":
                for key, d in got.distributions.items():
                    if key.metric.namespace == "toolformer" and key.metric.name == "time_ms:execute":
                        arrived += d.count
    except Exception:  # another runner's harness, another Beam version
        return None
    waiting = arrived - passed
    return done + waiting if arrived and waiting >= 0 else None


class AugmentModelHandler(ModelHandler):
    """RunInference handler: ``task`` "sample" (score positions + sample calls) or "filter" (losses).

    Batches hold at most ``max_batch_tokens`` estimated tokens (BatchElements counts element
    sizes, not elements); ``large_model`` shares one model per machine across processes.
    ``expected_units``, where the launcher knows it (e.g. a single-worker run that routed its
    documents first, with the tokenizer alone), makes the progress line done/total with an ETA.
    """

    def __init__(
        self,
        task: str,
        plan: ModelPlan,
        large_model: bool = False,
        threads: int = 0,
        expected_units: int | None = None,
    ):
        if task not in ("sample", "filter"):
            raise ValueError(f"unknown task {task!r}")
        super().__init__(
            min_batch_size=plan.max_batch_tokens,
            max_batch_size=plan.max_batch_tokens,
            element_size_fn=unit_tokens,
            large_model=large_model,
        )
        self.task = task
        self.plan = plan
        self.threads = threads
        self.expected_units = expected_units  # this task's units on this worker, where known

    def load_model(self) -> AugmentModel:
        if self.threads:
            # Measured here: on a shared 2-core machine a 2-thread matmul of a few rows waits ~24 ms
            # for its second thread; one thread ran the same work 10x faster.
            torch.set_num_threads(self.threads)
        return self.plan.load()

    def run_inference(
        self, batch: Sequence[dict], model: AugmentModel, inference_args: dict[str, Any] | None = None
    ) -> Iterable[tuple[dict, Any]]:
        if getattr(self, "_throttle", None) is None:  # the progress clock starts with the first batch
            self._throttle, self._units, self._candidates = Throttle(PROGRESS_EVERY_S), 0, 0
        # no_grad here, not torch.set_grad_enabled(False) at load: that flag is global to the thread,
        # and the in-process runner shares its thread with whatever runs next (e.g. fine-tuning).
        with torch.no_grad():
            out, retries = model.infer(self.task, list(batch))
        for line in retries:  # out-of-memory retries with a halved batch budget (AugmentModel.infer)
            log.warning("%s", line)
            Metrics.counter("toolformer", f"oom_retries:{self.task}").inc()
        self._progress(batch)
        return list(zip(batch, out))

    def _progress(self, batch: Sequence[dict]) -> None:
        """A progress line per worker and task every ``PROGRESS_EVERY_S`` (units = document windows
        per tool): logged, so it reaches a terminal and a cluster worker's log alike.

        Done/total, rate and ETA where the total is known (``expected_units``). Otherwise the
        total is not known to a worker: Route runs fused with the model, so documents are routed
        only as the model consumes them (measured on the local runner: the units routed stay one
        batch ahead of those sampled). The line then gives the units routed (sample) or sampled
        with candidates (filter) so far in this bundle and no ETA (see :func:`units_so_far`).
        """
        self._units += len(batch)
        Metrics.counter(PROGRESS_NAMESPACE, f"units_done:{self.task}").inc(len(batch))
        if self.task == "filter":
            self._candidates += sum(len(u["candidates"]) for u in batch)
        total = self.expected_units
        finished = total is not None and self._units >= total
        if not self._throttle.due(force=finished):
            return
        what = "augment sample" if self.task == "sample" else "augment filter"
        extra = f" ({self._candidates} candidates)" if self.task == "filter" else ""
        if total is not None:
            line = progress_text(what, self._units, self._throttle.elapsed(), total, extra=extra)
        else:
            so_far = units_so_far(self.task, self._units)
            line = progress_text(
                what,
                self._units,
                self._throttle.elapsed(),
                so_far,
                final=False,
                so_far="routed" if self.task == "sample" else "sampled with candidates",
                extra=extra,
            )
        progress_log.info("%s", line)

    def get_metrics_namespace(self) -> str:
        return "toolformer_" + self.task
