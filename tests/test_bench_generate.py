"""The generation benchmark runs and prints its table (figures live in the README)."""

from lit_gpt_scratch.bench import generate as bench


def test_bench_generate_prints_both_cache_modes(capsys):
    argv = ["--configs", "configs/tiny.yaml", "--new_tokens", "8", "--repeat", "1"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "command: python -m lit_gpt_scratch.bench.generate --configs configs/tiny.yaml" in out
    assert "| tiny | 1.4M | 8 | on |" in out and "| tiny | 1.4M | 8 | off |" in out
    assert "| tiny | | | speed-up |" in out
