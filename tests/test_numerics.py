"""runtime.numerics: the portable mode's environment, when it can be applied, and its reference jobs."""

import importlib.util
import os
import re
import subprocess
import sys
import textwrap

import pytest

from ncil.learning import numerics
from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("check_reproduction", ROOT / "scripts/check_reproduction.py")
check_reproduction = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_reproduction)


def test_portable_sets_the_three_libraries_and_native_removes_them():
    env = {"PATH": "/bin", "MKL_CBWR": "AVX512"}
    assert numerics.environment("portable", env) == {
        "PATH": "/bin", "MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert numerics.environment("native", env) == {"PATH": "/bin"}  # a stray setting is not native
    assert env == {"PATH": "/bin", "MKL_CBWR": "AVX512"}  # pure: the input is unchanged
    with pytest.raises(ValueError, match="runtime.numerics: expected native or portable, got 'fast'"):
        numerics.environment("fast", env)


def test_apply_refuses_once_torch_is_loaded(monkeypatch):
    import torch  # noqa: F401  (loaded, as in this test process)

    for key in numerics.PORTABLE_ENV:
        monkeypatch.delenv(key, raising=False)
    numerics.apply("native")  # nothing to change: fine
    with pytest.raises(RuntimeError, match="torch is already loaded"):
        numerics.apply("portable")
    assert "MKL_CBWR" not in os.environ


def test_portable_mode_reaches_aten_in_a_fresh_process():
    code = ("from ncil.learning import numerics; numerics.apply('portable'); import torch; "
            "print(torch.backends.cpu.get_cpu_capability())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "AVX2"  # on an AVX-512 machine too: the vectorised kernels are capped


def test_a_jobs_params_are_parsed_once_before_torch(tmp_path):
    """Issue 22 item 4: ``python -m ncil`` parses ``--params`` once with the typed parser, applies its numerics
    before torch loads, and the verb gets that same parse (``ncil.cli.load_params``)."""
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text().replace("numerics: native", "numerics: portable"))
    code = textwrap.dedent(f"""
        import sys
        from ncil import cli
        from ncil.pipeline import config
        parses = []
        real = config.load_params
        config.load_params = lambda path: parses.append(str(path)) or real(path)
        cli._prepare_job("prepare", {str(params)!r})
        assert "torch" not in sys.modules  # numerics applied before torch; prepare claims no device
        cli._prepare_job("train", {str(params)!r})  # the device check loads torch, after the numerics
        import torch
        from ncil.learning import numerics
        first = cli.load_params({str(params)!r})
        assert cli.load_params({str(params)!r}) is first
        print(len(parses), numerics.portable_active(), first[0].runtime.numerics, torch.backends.cpu.get_cpu_capability())
    """)
    env = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "True", "portable", "AVX2"], out.stderr


def test_portable_is_read_from_the_three_variables_and_only_then_fuses_adam():
    portable = {"PATH": "/bin", **numerics.PORTABLE_ENV}
    assert numerics.portable_active(portable) and numerics.adam_options(portable) == {"fused": True}
    partial = {k: v for k, v in portable.items() if k != "ONEDNN_MAX_CPU_ISA"}  # two of three: not the mode
    assert not numerics.portable_active(partial) and numerics.adam_options(partial) == {}
    other = {**portable, "ATEN_CPU_CAPABILITY": "avx512"}  # a different value: not the mode either
    assert numerics.adam_options(other) == {}
    assert numerics.adam_options(numerics.environment("native", portable)) == {}  # native: torch's default Adam


@pytest.mark.parametrize("mode, fused", [("native", "None"), ("portable", "True")])
def test_build_optimizer_fuses_adam_in_portable_processes_only(mode, fused):
    """In a fresh process (the mode is set before torch loads, as the CLI does): native builds Adam exactly as
    before (``fused`` left at torch's default None), portable with ``fused=True``; SGD is the same in both."""
    code = ("import sys; from ncil.learning import numerics; numerics.apply(sys.argv[1]); import torch; "
            "from ncil.learning.optim import Recipe, build_optimizer; w = [torch.nn.Parameter(torch.zeros(3))]; "
            "adam, _ = build_optimizer(w, Recipe('adam', 1, 1e-3, 2e-4, 0.0, (), 0, 0.1)); "
            "sgd, _ = build_optimizer(w, Recipe('sgd', 1, 0.1, 5e-4, 0.9, (), 0, 0.1)); "
            "print(adam.defaults['fused'], adam.defaults['foreach'], 'fused' in sgd.defaults and sgd.defaults['fused'])")
    env = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV}
    out = subprocess.run([sys.executable, "-c", code, mode], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout
    adam_fused, adam_foreach, sgd_fused = out.split()
    assert (adam_fused, adam_foreach) == (fused, "None")
    assert sgd_fused in ("None", "False")  # SGD: never fused by this mode


HERE = {"machine": "x86_64", "cpu_vendor": "AuthenticAMD", "cpu_family": "25", "cpu_model": "1", "torch": "2.14.1",
        "torch_cpu_capability": "AVX2"}


@pytest.mark.parametrize("confirmed, equal, rc", [
    (["a", "b"], True, 0), (["a", "b"], False, 1),  # a type that confirmed both outputs: a difference fails
    (["b"], False, 4),  # confirmed b only (an earlier, smaller reference): a differing a is reported
    (None, True, 0), (None, False, 4)])  # a type not listed: reported, never failed
def test_portable_check_fails_only_on_an_output_this_type_confirmed(confirmed, equal, rc):
    other = {**HERE, "cpu_model": "17", "files": ["a", "b"]}
    reference = {"hashes": {"a": "1" * 32, "b": "3" * 32},
                 "confirmed_on": [other] + ([{**HERE, "files": confirmed}] if confirmed is not None else [])}
    found = {"a": "1" * 32 if equal else "2" * 32, "b": "3" * 32}
    code, message = check_reproduction.check_portable(found, reference, HERE)
    assert code == rc
    if not equal:
        assert f"a: reference {'1' * 32}, here {'2' * 32}" in message


def test_an_output_without_a_reference_hash_is_listed_and_recorded_with_this_types_confirmation():
    reference = {"hashes": {"a": "1" * 32}, "confirmed_on": [{**HERE, "files": ["a"], "evidence": "run 1"},
                                                              {**HERE, "cpu_model": "17", "files": ["a"]}]}
    found = {"a": "1" * 32, "b": "5" * 32}  # b: a reference job added since
    code, message = check_reproduction.check_portable(found, reference, HERE)
    assert code == 0 and "1 outputs have no reference hash yet (b)" in message
    changes = check_reproduction.record_confirmation(reference, found, {**HERE, "cpu_name": "x", "cpu_flags": []},
                                                     12.0, day="2026-12-06")
    assert reference["hashes"] == {"a": "1" * 32, "b": "5" * 32} and len(changes) == 2
    assert reference["confirmed_on"][0]["files"] == ["a", "b"]  # this type: both
    assert reference["confirmed_on"][0]["evidence"].startswith("run 1; 2026-12-06: all 2 reference outputs")
    assert reference["confirmed_on"][1]["files"] == ["a"]  # the other type confirmed a only: it compares a only
    assert check_reproduction.record_confirmation(reference, found, HERE, 12.0) == []  # nothing new the second time


def test_committed_reference_lists_its_hashes_and_where_they_held():
    reference = check_reproduction.io.read_json(ROOT / check_reproduction.PORTABLE_REFERENCE)
    assert sorted(reference["hashes"]) == sorted(check_reproduction.REFERENCE_FILES)
    assert reference["confirmed_on"] and all(len(h) == 32 for h in reference["hashes"].values())
    # each confirmation says when, by what and which outputs (issue 23, item 1): two vendors, four types on record
    assert all(re.fullmatch(r"2026-\d\d-\d\d", e["date"]) and e["evidence"] for e in reference["confirmed_on"])
    assert all(set(e["files"]) <= set(reference["hashes"]) for e in reference["confirmed_on"])
    assert {e["cpu_vendor"] for e in reference["confirmed_on"]} == {"AuthenticAMD", "GenuineIntel"}
    # every backbone of the default grid has reference outputs, and some type reproduced all of them
    assert {f.split("/")[1] for f in reference["hashes"]} == {"t0", "t1", "r0", "o0"}
    assert check_reproduction.confirmed_types(ROOT / check_reproduction.PORTABLE_REFERENCE)


def test_a_recorded_confirmation_is_the_cpu_type_its_day_and_its_run():
    here = {**HERE, "cpu_name": "AMD EPYC", "cpu_flags": ["avx2"], "hostname": "not recorded"}
    entry = check_reproduction.confirmation(here, 41.6, ["b", "a"], day="2026-12-05")
    assert check_reproduction.same_platform(entry, HERE) and "hostname" not in entry
    assert entry["date"] == "2026-12-05" and "2 reference outputs bit-identical (42 s)" in entry["evidence"]
    assert entry["files"] == ["a", "b"]


@pytest.mark.slow
def test_reference_jobs_reproduce_the_committed_hashes(tmp_path, capsys):
    """Byte for byte on a CPU type that confirmed the reference; on another type, reported (rc 4)."""
    reference = check_reproduction.io.read_json(ROOT / check_reproduction.PORTABLE_REFERENCE)
    found = check_reproduction.run_reference_jobs(tmp_path)
    code, message = check_reproduction.check_portable(found, reference, check_reproduction.current_platform())
    with capsys.disabled():
        print("\n" + message)
    assert code in (0, 4), message


def test_emulated_runs_are_prefixed_with_qemu_and_never_recorded(tmp_path):
    assert check_reproduction.emulator_prefix("EPYC-Milan") == ["qemu-x86_64", "-cpu", "EPYC-Milan"]
    assert check_reproduction.emulator_prefix(None) == []
    with pytest.raises(SystemExit, match="an emulated CPU is not a machine"):
        check_reproduction.portable_command(tmp_path / "ref.json", record=True, folder=tmp_path, emulate="EPYC-Milan")
    assert not (tmp_path / "params.yaml").exists()  # refused before any job ran


def test_bench_applies_the_composed_numerics_before_torch_loads():
    """``python -m ncil bench`` has no ``--params`` for the CLI to read the mode from before torch starts, so
    bench applies the composed ``runtime.numerics`` itself: with ``-o runtime.numerics=portable`` the timed step
    runs on AVX2-capped ATen kernels with fused Adam, and says so (it used to time native kernels silently)."""
    code = textwrap.dedent("""
        import sys, types
        from ncil.cli import main
        step_timing = types.ModuleType("ncil.learning.step_timing")  # the real one imports torch
        sys.modules["ncil.learning.step_timing"] = step_timing
        seen = []
        def fake_bench_step(p, method, batch, steps):
            import torch
            from ncil.learning import numerics
            seen.append((numerics.portable_active(), torch.backends.cpu.get_cpu_capability()))
            return {"rows": batch, "parameters": 1, "threads": 1, "step_ms": 2.0, "floor_ms": 1.0, "floor_passes": "x",
                    "ratio": 2.0, "step_median_ms": 2.0, "floor_median_ms": 1.0, "median_ratio": 2.0, "images_per_s": 1.0}
        step_timing.bench_step = fake_bench_step
        assert "torch" not in sys.modules
        assert main(["bench", "--method", "finetune", "--steps", "1", "-o", "runtime.numerics=portable"]) == 0
        print(*seen[0])
    """)
    env = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "portable numerics" in done.stdout + done.stderr
    assert done.stdout.split()[-2:] == ["True", "AVX2"], done.stdout
