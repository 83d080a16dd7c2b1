import dataclasses
import math
import os
import subprocess
import sys

import pytest
import torch
from helpers import weights_equal

from ddpm_utils import training
from ddpm_utils.__main__ import main
from ddpm_utils.checkpoints import load_checkpoint, sha256
from ddpm_utils.training import StepBatchSampler, TrainConfig, amp_dtype, train

# tiny and quick, but with dropout on so the saved RNG states matter
CFG = TrainConfig(preset="tiny", unet={"dropout": 0.1}, T=50, batch_size=8, max_steps=6, checkpoint_every=3,
                  warmup_steps=2, sample_steps=2, data_source="bundled")


def test_resume_is_exact(tmp_path):
    straight = train(CFG, tmp_path / "a", progress=False)
    train(dataclasses.replace(CFG, max_steps=3), tmp_path / "b", progress=False)
    resumed = train(CFG, tmp_path / "b", resume=True, progress=False)
    assert weights_equal(straight["model"], resumed["model"]) and weights_equal(straight["ema"], resumed["ema"])
    assert straight["history"] == resumed["history"] and len(straight["history"]) == 6
    assert load_checkpoint(tmp_path / "b" / "last.pt").step == 6
    assert (tmp_path / "b" / "samples.png").stat().st_size > 0
    assert not weights_equal(straight["model"], straight["ema"])  # the EMA lags behind the weights


def test_callback_sees_every_step_and_a_finished_run_resumes_to_nothing(tmp_path):
    seen = []
    run = train(dataclasses.replace(CFG, max_steps=3), tmp_path, progress=False, callback=lambda step, h, val: seen.append((step, len(h))))
    assert seen == [(1, 1), (2, 2), (3, 3)] and run["history"][-1][0] == 3
    again = train(dataclasses.replace(CFG, max_steps=2), tmp_path, resume=True, progress=False)  # already past step 2
    assert len(again["history"]) == 3 and load_checkpoint(tmp_path / "last.pt").step == 3


def test_an_interrupted_run_leaves_a_checkpoint_that_resumes_exactly(tmp_path, monkeypatch):
    straight = train(CFG, tmp_path / "a", progress=False)
    calls = {"n": 0}
    real = training.update_ema

    def crash_on_fifth_step(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # arrives mid-step, after the optimizer update began
        real(*args)

    monkeypatch.setattr(training, "update_ema", crash_on_fifth_step)
    with pytest.raises(KeyboardInterrupt):
        train(CFG, tmp_path / "b", progress=False)
    assert load_checkpoint(tmp_path / "b" / "last.pt").step == 3  # mid-update: the last scheduled checkpoint stands

    monkeypatch.setattr(training, "update_ema", real)
    real_loss = training.GaussianDiffusion.training_loss
    seen = {"n": 0}

    def interrupt_in_fifth_forward(self, *args, **kwargs):
        seen["n"] += 1
        if seen["n"] == 5:
            raise KeyboardInterrupt  # the usual case: Ctrl-C during the forward or backward pass
        return real_loss(self, *args, **kwargs)

    monkeypatch.setattr(training.GaussianDiffusion, "training_loss", interrupt_in_fifth_forward)
    with pytest.raises(KeyboardInterrupt):
        train(CFG, tmp_path / "c", progress=False)
    assert load_checkpoint(tmp_path / "c" / "last.pt").step == 4  # saved on the way out
    monkeypatch.setattr(training.GaussianDiffusion, "training_loss", real_loss)
    resumed = train(CFG, tmp_path / "c", resume=True, progress=False)
    assert weights_equal(straight["model"], resumed["model"]) and straight["history"] == resumed["history"]


def test_non_finite_loss_or_weights_stop_with_a_clear_message_and_no_nan_is_saved(tmp_path, monkeypatch):
    cfg = dataclasses.replace(CFG, lr=1e30, grad_clip=0.0, max_steps=50, checkpoint_every=1)
    with pytest.raises(FloatingPointError, match="loss is (nan|inf) at step [0-9]+; weights not saved"):
        train(cfg, tmp_path / "a", progress=False)  # weights near 1e30 are finite, but the loss overflows
    ckpt = load_checkpoint(tmp_path / "a" / "last.pt")
    assert 0 < ckpt.step < 50 and all(torch.isfinite(p).all() for p in ckpt.model.state_dict().values())
    real = training.update_ema

    def poison(ema, model, decay):  # however a NaN gets into the weights, it is never written
        real(ema, model, decay)
        next(model.parameters()).data.fill_(float("nan"))

    monkeypatch.setattr(training, "update_ema", poison)
    with pytest.raises(FloatingPointError, match="weights are not finite at step 1; not saved"):
        train(dataclasses.replace(CFG, checkpoint_every=1), tmp_path / "b", progress=False)
    assert not (tmp_path / "b" / "last.pt").exists()


def test_resume_refuses_a_different_config(tmp_path):
    train(dataclasses.replace(CFG, max_steps=3), tmp_path, progress=False)
    with pytest.raises(ValueError, match="different TrainConfig \\(now vs then\\): \\{'lr': \\(0.001, 0.0002\\)\\}. To train with "
                                         "the new settings, start afresh in another run folder"):
        train(dataclasses.replace(CFG, lr=1e-3), tmp_path, resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        train(CFG, tmp_path / "missing", resume=True, progress=False)


def test_step_batch_sampler_is_a_function_of_the_step():
    full = list(StepBatchSampler(100, 8, seed=1, start_step=0, max_steps=30))
    assert list(StepBatchSampler(100, 8, seed=1, start_step=17, max_steps=30)) == full[17:]
    per_epoch = 100 // 8
    assert sorted(sum(full[:per_epoch], [])) == sorted(set(sum(full[:per_epoch], [])))  # no repeats within an epoch
    ranks = [list(StepBatchSampler(100, 4, seed=1, start_step=0, max_steps=5, rank=r, world=2)) for r in range(2)]
    for a, b in zip(*ranks, strict=True):
        assert not set(a) & set(b)  # the two processes see different images at each step
    with pytest.raises(ValueError, match="larger than the data set"):
        StepBatchSampler(10, 8, 0, 0, 1, world=2)


def test_amp_choice_and_config_validation(monkeypatch):
    assert amp_dtype("auto", torch.device("cpu")) is None and amp_dtype("off", torch.device("cuda")) is None
    assert amp_dtype("bf16", torch.device("cuda")) is torch.bfloat16
    for major, dtype in [(7, torch.float16), (8, torch.bfloat16), (9, torch.bfloat16)]:  # T4 is 7.5, A100 8.0, H100 9.0
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, major=major: (major, 5))
        assert amp_dtype("auto", torch.device("cuda")) is dtype
    with pytest.raises(ValueError, match="amp must be"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        TrainConfig(max_steps=0)


def test_cli_train_then_sample(tmp_path, capsys):
    args = ["train", "--preset", "tiny", "--max-steps", "2", "--batch-size", "4", "--T", "20", "--sample-steps", "2",
            "--data-source", "bundled", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    assert main(["sample", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--steps", "2", "--num", "10",
                 "--label", "3", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    assert main(["sample", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--label", "12", "--out", "x.png"]) == 2
    assert "--label '12' is not a class of this model; its classes are" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tmp_path / "nope.pt"), "--out", "x.png"]) == 2
    assert "no checkpoint file" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path), "--batch-size", "abc"]) == 2
    assert "invalid int value: 'abc'" in capsys.readouterr().err

    # export: the EMA weights in the bundled format, smaller, loading as the model's own weights
    assert main(["export", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--out", str(tmp_path / "w.pt")]) == 0
    assert "SHA-256 " + sha256(tmp_path / "w.pt") in capsys.readouterr().out
    run, exported = load_checkpoint(tmp_path / "run" / "last.pt", use_ema=True), load_checkpoint(tmp_path / "w.pt")
    assert weights_equal(run.model, exported.model) and exported.step == 2 and exported.data["optimizer"] is None
    assert exported.data["extra"]["train_config"]["max_steps"] == 2 and exported.dataset == run.dataset
    assert (tmp_path / "w.pt").stat().st_size < 0.6 * (tmp_path / "run" / "last.pt").stat().st_size


def test_torchrun_two_processes_on_cpu(tmp_path):
    """DistributedDataParallel with the gloo backend: two CPU processes train one model, rank 0 writes one checkpoint."""
    env = {**os.environ, "DDPM_FAST": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ddpm_utils", "train",
           "--preset", "tiny", "--max-steps", "3", "--batch-size", "4", "--T", "20", "--sample-steps", "2",
           "--data-source", "bundled", "--out", str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "loss.png", "samples.png"]
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt.step == 3 and len(ckpt.data["extra"]["noise_rng"]) == 2


def test_bench_measures_throughput(capsys):
    from ddpm_utils.bench import benchmark

    rows = benchmark("tiny", batch_sizes=(2, 4), steps=1, warmup=0, device="cpu")
    assert [(r["batch"], r["amp"], r["compile"]) for r in rows] == [(2, "off", False), (4, "off", False)]
    assert all(r["train_img_s"] > 0 and r["sample_img_s"] > 0 for r in rows)
    assert main(["bench", "--preset", "tiny", "--batch-sizes", "2", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "train img/s" in out and out.count("\n") == 2  # header and one row
    assert main(["bench", "--batch-sizes", "a,b"]) == 2


def test_v_prediction_with_learned_variance_and_min_snr_trains_resumes_and_samples(tmp_path, capsys):
    cfg = dataclasses.replace(CFG, prediction="v", learned_variance=True, loss_weighting="min-snr", max_steps=4,
                              checkpoint_every=2)
    straight = train(cfg, tmp_path / "a", progress=False)
    train(dataclasses.replace(cfg, max_steps=2), tmp_path / "b", progress=False)
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    assert weights_equal(straight["model"], resumed["model"]) and straight["history"] == resumed["history"]
    ck = load_checkpoint(tmp_path / "b" / "last.pt", use_ema=True)
    assert ck.diffusion.prediction == "v" and ck.model.config.learned_variance
    assert ck.data["extra"]["train_config"]["loss_weighting"] == "min-snr"
    with pytest.raises(ValueError, match="predicts 'v', but the given diffusion reads its output as 'x0'"):
        train(dataclasses.replace(cfg, prediction="x0"), tmp_path / "b", resume=True, progress=False)
    args = ["train", "--preset", "tiny", "--max-steps", "1", "--batch-size", "4", "--T", "20", "--sample-steps", "2",
            "--data-source", "bundled", "--prediction", "x0", "--learned-variance", "--out", str(tmp_path / "cli")]
    assert main(args) == 0
    ck = load_checkpoint(tmp_path / "cli" / "last.pt")
    assert ck.diffusion.prediction == "x0" and ck.model.config.learned_variance
    assert main([*args[:-2], "--prediction", "score", "--out", str(tmp_path / "bad")]) == 2
    assert "invalid choice: 'score'" in capsys.readouterr().err


def test_a_run_from_before_the_objective_options_resumes(tmp_path):
    """Checkpoints written before `prediction`, `learned_variance`, ... existed hold no such fields."""
    train(dataclasses.replace(CFG, max_steps=2), tmp_path, progress=False)
    data = torch.load(tmp_path / "last.pt", weights_only=True)
    for key in ("prediction", "learned_variance", "loss_weighting", "hybrid_lambda", "lr_decay_steps", "ema_warmup"):
        del data["extra"]["train_config"][key]
    torch.save(data, tmp_path / "last.pt")
    assert train(dataclasses.replace(CFG, max_steps=3), tmp_path, resume=True, progress=False)["history"][-1][0] == 3


def test_objective_config_validation():
    for kw, match in [({"prediction": "score"}, "prediction must be one of"), ({"loss_weighting": "snr"}, "loss_weighting one of"),
                      ({"hybrid_lambda": -1.0}, "hybrid_lambda must be >= 0"),
                      ({"unet": {"learned_variance": True}}, "set TrainConfig.learned_variance")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**kw)


def test_learning_rate_warms_up_then_decays_by_half_a_cosine_to_a_tenth():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, lr_decay_steps=110)
    factors = [training.lr_factor(cfg, step) for step in range(200)]
    assert factors[0] == pytest.approx(0.1)  # linear warm-up: 1/10 of the peak at step 0
    assert factors[9] == pytest.approx(0.5 * (1.1 + 0.9 * math.cos(math.pi * 9 / 110)))  # warm-up done, decay begun
    assert factors[55] == pytest.approx(0.55)  # half way: the mean of 1 and 0.1
    assert factors[110:] == [pytest.approx(0.1)] * 90  # the floor, kept after lr_decay_steps
    assert all(a >= b for a, b in zip(factors[9:-1], factors[10:], strict=True))  # never rises after the warm-up
    assert [training.lr_factor(TrainConfig(warmup_steps=4), s) for s in (0, 3, 1000)] == [0.25, 1.0, 1.0]  # no decay: as before
    with pytest.raises(ValueError, match="lr_decay_steps must be >= 0"):
        TrainConfig(lr_decay_steps=-1)


def test_ema_warmup_starts_close_to_the_weights_and_reaches_the_decay():
    cfg = TrainConfig(ema_decay=0.999, ema_warmup=True)
    assert training.ema_decay_at(cfg, 0) == pytest.approx(0.1) and training.ema_decay_at(cfg, 90) == pytest.approx(0.91)
    assert training.ema_decay_at(cfg, 8990) == pytest.approx(0.999) and training.ema_decay_at(cfg, 10**6) == 0.999
    assert training.ema_decay_at(dataclasses.replace(cfg, ema_warmup=False), 0) == 0.999


def test_a_run_with_lr_decay_and_ema_warmup_resumes_exactly(tmp_path):
    cfg = dataclasses.replace(CFG, lr_decay_steps=5, ema_warmup=True, ema_decay=0.99)
    straight = train(cfg, tmp_path / "a", progress=False)
    train(dataclasses.replace(cfg, max_steps=3), tmp_path / "b", progress=False)
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    assert weights_equal(straight["model"], resumed["model"]) and weights_equal(straight["ema"], resumed["ema"])
    # the warmed-up EMA after 6 steps is a short average of the last weights, far closer to them than the plain one
    plain = train(dataclasses.replace(cfg, ema_warmup=False), tmp_path / "c", progress=False)
    distance = lambda run: sum((e - p).pow(2).sum() for e, p in zip(run["ema"].parameters(), run["model"].parameters(), strict=True))  # noqa: E731
    assert weights_equal(plain["model"], straight["model"]) and distance(straight) < 0.2 * distance(plain)


def test_optimizer_step_skips_an_overflow_without_advancing_the_schedule():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 10))  # a warm-up
    scaler = torch.amp.GradScaler("cpu", enabled=True)  # the fp16 branch, on the CPU
    before = [p.clone() for p in model.parameters()]
    loss = model(torch.randn(3, 4)).pow(2).mean()
    assert training.optimizer_step(loss, model, optimizer, scheduler, scaler, grad_clip=1.0)
    assert scheduler.last_epoch == 1 and not torch.equal(before[0], model.weight)
    after, scale = [p.clone() for p in model.parameters()], scaler.get_scale()
    overflow = model(torch.randn(3, 4)).sum() * float("inf")
    assert not training.optimizer_step(overflow, model, optimizer, scheduler, scaler, grad_clip=1.0)
    assert scheduler.last_epoch == 1 and scaler.get_scale() == scale / 2  # skipped: no update, no schedule step
    assert all(torch.equal(a, p) for a, p in zip(after, model.parameters(), strict=True))
    off = torch.amp.GradScaler("cpu", enabled=False)  # float32 / bf16: every step is taken
    assert training.optimizer_step(model(torch.randn(3, 4)).sum(), model, optimizer, scheduler, off, grad_clip=0.0)
    assert scheduler.last_epoch == 2


def test_bf16_and_fp16_train_on_the_cpu_and_fp16_survives_an_overflow(tmp_path, monkeypatch):
    bf16 = train(dataclasses.replace(CFG, amp="bf16", max_steps=3), tmp_path / "bf16", device="cpu", progress=False)
    assert len(bf16["history"]) == 3 and all(torch.isfinite(torch.tensor(loss)) for _, loss in bf16["history"])
    calls = {"n": 0}
    real_loss = training.GaussianDiffusion.training_loss

    def overflow_at_step_2(self, *args, **kwargs):  # what an fp16 overflow looks like to the loop
        calls["n"] += 1
        loss = real_loss(self, *args, **kwargs)
        return loss * float("inf") if calls["n"] == 2 else loss

    monkeypatch.setattr(training.GaussianDiffusion, "training_loss", overflow_at_step_2)
    fp16 = train(dataclasses.replace(CFG, amp="fp16", max_steps=4, checkpoint_every=4), tmp_path / "fp16", device="cpu",
                 progress=False)
    losses = [loss for _, loss in fp16["history"]]
    assert len(losses) == 4 and losses[1] == float("inf") and all(torch.isfinite(torch.tensor(losses[i])) for i in (0, 2, 3))
    saved = load_checkpoint(tmp_path / "fp16" / "last.pt").data["extra"]
    assert saved["scheduler"]["last_epoch"] == 3  # 4 steps, 1 skipped: the warm-up counted 3 updates
    assert saved["scaler"]["scale"] == 65536.0 / 2  # the scaler lowered its scale once

    monkeypatch.setattr(training, "MAX_SKIPPED_STEPS", 2)
    monkeypatch.setattr(training.GaussianDiffusion, "training_loss", lambda self, *a, **k: real_loss(self, *a, **k) * float("nan"))
    with pytest.raises(FloatingPointError, match="loss is nan at step 2"):  # an fp16 run that never recovers has diverged
        train(dataclasses.replace(CFG, amp="fp16"), tmp_path / "diverged", device="cpu", progress=False)
    with pytest.raises(FloatingPointError, match="loss is nan at step 0"):  # without the scaler: at once
        train(dataclasses.replace(CFG, amp="bf16"), tmp_path / "bf16-nan", device="cpu", progress=False)
