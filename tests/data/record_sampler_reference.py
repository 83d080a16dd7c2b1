"""Samples from the sampler code as it was before the redesign (commit 56435c9), recorded for
tests/test_samplers.py: the old samplers must give the same numbers for the same seed.
Run from the repository root: python tests/data/record_sampler_reference.py
(The test reruns it with SKIP naming cases it leaves out, to save time; recording leaves out none.)"""
import torch

from ddpm_utils.diffusion import GaussianDiffusion
from ddpm_utils.points import PointMLP, PointMLPConfig
from ddpm_utils.samplers import sample
from ddpm_utils.unet import UNet, UNetConfig

SKIP = globals().get("SKIP", set())
torch.manual_seed(0)
out = {}
for prediction, learned in [("eps", False), ("v", False), ("x0", False), ("eps", True)]:
    torch.manual_seed(0)
    model = UNet(UNetConfig.preset("tiny", num_classes=10, learned_variance=learned)).eval()
    diffusion = GaussianDiffusion.from_schedule("cosine", 100, prediction=prediction)
    cases = {
        "ddpm_all": dict(sampler="ddpm", num_steps=None),
        "ddpm_10": dict(sampler="ddpm", num_steps=10),
        "ddpm_10_beta": dict(sampler="ddpm", num_steps=10, variance="beta"),
        "ddim_8": dict(sampler="ddim", num_steps=8),
        "ddim_8_eta": dict(sampler="ddim", num_steps=8, eta=0.7),
        "dpm_6": dict(sampler="dpm-solver++", num_steps=6),
        "ddim_1": dict(sampler="ddim", num_steps=1),
    }
    for name, kw in cases.items():
        for guidance in (1.0, 3.0):
            if f"{prediction}{'_learned' if learned else ''}/{name}/s{guidance:g}" in SKIP:
                continue
            y = torch.tensor([3, 7])
            x = sample(model, diffusion, (2, 1, 28, 28), y=y, guidance_scale=guidance,
                       generator=torch.Generator().manual_seed(1), progress=False, **kw)
            out[f"{prediction}{'_learned' if learned else ''}/{name}/s{guidance:g}"] = x.clone()
print(len(out), {k: round(v.abs().mean().item(), 4) for k, v in list(out.items())[:4]})
torch.save(out, "tests/data/sampler_reference.pt")

# points, with classifier guidance from a small fixed linear classifier, and a trajectory
torch.manual_seed(0)
net = PointMLP(PointMLPConfig(num_classes=3)).eval()
clf = torch.nn.Linear(3, 3)
classifier = lambda x, t: clf(torch.cat([x, t[:, None].float() / 100], 1))  # noqa: E731
diffusion = GaussianDiffusion.from_schedule("linear", 100)
for name, kw in {"ddpm_all": dict(sampler="ddpm", num_steps=None), "ddpm_10": dict(sampler="ddpm", num_steps=10),
                 "ddim_8_eta": dict(sampler="ddim", num_steps=8, eta=1.0), "dpm_6": dict(sampler="dpm-solver++", num_steps=6)}.items():
    x, traj = sample(net, diffusion, (16, 2), y=torch.arange(16) % 3, guidance_scale=2.0, classifier=classifier,
                     classifier_scale=1.5, generator=torch.Generator().manual_seed(2), progress=False,
                     return_trajectory=True, **kw)
    out[f"points/{name}"] = x.clone()
    out[f"points/{name}/x0_pred"] = traj["x0_pred"].clone()
    out[f"points/{name}/t"] = traj["t"].clone()
torch.save(out, "tests/data/sampler_reference.pt")
print(len(out))
