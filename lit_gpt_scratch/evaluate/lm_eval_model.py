"""The project's GPT as an lm-evaluation-harness model: ``--model lit_gpt_scratch``.

Importing this module registers the model class with the harness. The ``lm_eval`` script
cannot find models of other packages, so the project's ``lm_eval`` subcommand imports this
module and then runs the harness's own command line:

    python -m lit_gpt_scratch lm_eval --model lit_gpt_scratch \\
        --model_args ckpt_path=checkpoints/tiny/version_0/checkpoints/last.ckpt --tasks hellaswag

From Python: ``import lit_gpt_scratch.evaluate.lm_eval_model`` then
``lm_eval.simple_evaluate(model="lit_gpt_scratch", model_args="ckpt_path=...", ...)``.

The harness's requests are scored by the same code as ``evaluate`` (``scoring.py``), so the
two give the same log-likelihoods.
"""

from __future__ import annotations

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from lit_gpt_scratch.evaluate.loading import load_scored_model
from lit_gpt_scratch.evaluate.runner import item_scores
from lit_gpt_scratch.evaluate.scoring import encode_request, rolling_windows
from lit_gpt_scratch.model.generate import generate


@register_model("lit_gpt_scratch")
class LitGPTScratchLM(LM):
    """A checkpoint of the project (from fit, import_hf or consolidate), any plug-ins.

    Args:
        ckpt_path: The checkpoint file.
        device: cpu, cuda, cuda:N or auto.
        batch_size: Requests per forward pass (the harness's ``--batch_size``).
        precision: As ``evaluate --precision``; by default the dtype of the stored weights.
        tokenizer: Tokenizer spec; by default the checkpoint's.
        max_gen_toks: Most new tokens of a ``generate_until`` request that names none.
    """

    def __init__(
        self,
        ckpt_path: str,
        device: str = "auto",
        batch_size: int | str = 4,
        precision: str | None = None,
        tokenizer: str | None = None,
        max_gen_toks: int = 256,
        **unused,  # the harness passes max_batch_size and others every model may ignore
    ):
        super().__init__()
        self.model = load_scored_model(str(ckpt_path), str(device), precision, tokenizer)
        self.gpt, self.tok = self.model.gpt, self.model.tokenizer
        self.batch_size = 4 if str(batch_size).startswith("auto") else int(batch_size)
        self.max_gen_toks = int(max_gen_toks)

    @property
    def device(self):
        return self.model.device

    @property
    def tokenizer_name(self) -> str:
        return self.tok.spec

    def _scores(self, encoded: list) -> list:
        items = [(request,) for request in encoded]
        with self.model.autocast():
            scores = item_scores(self.model.forward, items, self.device, self.batch_size)
        return [s[0] for s in scores]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        block = self.gpt.block_size
        encoded = [encode_request(self.tok, c, k, block) for c, k in (r.args for r in requests)]
        return [(s.loglikelihood, s.greedy) for s in self._scores(encoded)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        totals = []
        for (text,) in (r.args for r in requests):
            ids = self.tok.encode_ordinary(text).tolist()
            windows = rolling_windows(ids, self.tok.eot_id, self.gpt.block_size)
            totals.append(sum(s.loglikelihood for s in self._scores(windows)))
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        outputs = []
        for context, options in (r.args for r in requests):
            options = dict(options or {})
            until = options.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = min(
                int(options.pop("max_gen_toks", self.max_gen_toks)), self.gpt.block_size - 1
            )
            sampling = options.pop("do_sample", False)
            temperature = float(options.pop("temperature", 0.0)) if sampling else 0.0
            ids = self.tok.encode_ordinary(context).tolist() if context else [self.tok.eot_id]
            ids = ids[-(self.gpt.block_size - max_new) :]
            with self.model.autocast():
                [new] = generate(
                    self.gpt, [ids], max_new, temperature=temperature,
                    stop_id=self.tok.eot_id, vocab_limit=self.tok.vocab_size,
                )  # fmt: skip
            text = self.tok.decode(new)
            cuts = [text.index(stop) for stop in until if stop and stop in text]
            outputs.append(text[: min(cuts)] if cuts else text)
        return outputs


def run_harness(args: list[str]) -> int:
    """The harness's command line (``lm_eval ...``), with this project's model registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    argv = sys.argv
    sys.argv = ["lm_eval", *args]
    try:
        cli_evaluate()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    return 0
