"""sparsekit bench on the command line (the library call and its self-check: tests/workflows/test_bench.py)."""

import json

from conftest import scramble_one_layer


def test_cli_bench_on_the_cpu_says_where_kernels_pay_off(cli, monkeypatch):
    code, stdout, _ = cli("bench", "--random", "llama-tiny", "--prompt", 16, "--new", 4, "--device", "cpu",
                          "--dtype", "float32")
    assert code == 0, stdout
    text = " ".join(stdout.split())  # the console wraps long lines
    assert "2:4 logits within 0.0001 of dense" in text and "Note:" in text and "GPU" in text
    code, stdout, _ = cli("bench", "--random", "llama-tiny", "--prompt", 16, "--new", 4, "--device", "cpu",
                          "--dtype", "float32", "--json")
    result = json.loads(stdout)
    assert code == 0 and result["check_passed"] and result["max_logit_rel_diff"] <= result["tolerance"]

    # a wrong sparse path is exit code 1 with the result and a message, not a success
    import sparsekit.workflows.bench

    real = sparsekit.workflows.bench.run_bench

    def broken(model, *a, **k):
        return real(model, *a, corrupt=scramble_one_layer, **k)

    monkeypatch.setattr(sparsekit.workflows.bench, "run_bench", broken)
    code, stdout, stderr = cli("bench", "--random", "llama-tiny", "--prompt", 16, "--new", 4, "--device", "cpu",
                               "--dtype", "float32")
    assert code == 1 and "does not compute the dense model" in stderr and "Traceback" not in stderr
