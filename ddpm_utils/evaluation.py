"""Honest numbers for generated digits, judged by the shipped MNIST classifier (`classifier.py`), or for
samples of any labelled data set, judged by a classifier that `ddpm train-classifier --dataset` trained on it.

For a batch of samples:
- **label accuracy**: how often the classifier reads the digit that was asked for;
- **confidence**: the classifier's mean top probability (blurry or malformed digits score low);
- **class histogram**: how many samples look like each digit (a collapsed model piles onto a few);
- **FD on MNIST-classifier features**: the Frechet distance between Gaussians fitted to the
  classifier's 128 penultimate features of the samples and of the 500 held-out real digits. This is
  the recipe of FID with a small MNIST classifier in place of Inception, so its values are not
  comparable with published FIDs. It is biased upwards for small n: compare it with the `real`
  row (n real training digits against the same held-out digits), which is the best achievable.
- **KID on the same features** (kernel inception distance, Binkowski et al. 2018): the unbiased estimate
  of the squared MMD with the cubic kernel (x.y / D + 1)^3. Unlike FD it has no small-sample bias (its
  mean over draws is the population value, 0 for two samples of one distribution), so at CPU sample sizes
  it compares settings more fairly. Its scatter at small n is large (real digits against the held-out
  ones: -69 to +100 over four draws at n = 50, -24 to -8 at n = 200), so read it next to the real row too.
- **diversity**: the mean pixel distance between two samples asked to be the same digit (high
  guidance trades it for fidelity); real digits of one class give the reference;
- **memorisation**: the pixel distance from each sample to its nearest training image, next to the
  same distance for held-out real digits. Copies of training images would sit far below it.
- **uncertainty**: with the 100-1,000 samples a CPU affords, differences between settings are often
  noise. `score` gives a 95 % (Wilson) interval for the accuracy, `Evaluator.fd_interval` a
  bootstrap interval for the FD, and `Evaluator.fd_difference_interval` a paired one for the
  difference of two settings sampled from the same noise; report them next to the numbers.
- **bits/dim** (`bits_per_dim`): the model's own likelihood bound on held-out digits, needing no classifier.

`python -m ddpm_utils evaluate` prints these as a table.
"""

from __future__ import annotations

import time

import torch

from .classifier import load_classifier
from .data import load_dataset, load_mnist
from .samplers import sample


@torch.no_grad()
def classify(images: torch.Tensor, classifier, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities (B, num_classes), penultimate features (B, 128)) of images in [-1, 1], on the CPU."""
    device = next(classifier.parameters()).device
    probs, feats = [], []
    for i in range(0, len(images), batch_size):
        f = classifier.features(images[i: i + batch_size].to(device).float().clamp(-1, 1))
        probs.append(classifier.head(f).softmax(-1).cpu())
        feats.append(f.cpu())
    return torch.cat(probs), torch.cat(feats)


def proportion_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95 % for z = 1.96) for a proportion p observed in n trials, such as an accuracy.
    Unlike p +- z sqrt(p (1 - p) / n), it stays inside [0, 1] and is not empty at p = 0 or 1."""
    if n < 1 or not 0.0 <= p <= 1.0:
        raise ValueError(f"need n >= 1 and p in [0, 1], got n={n}, p={p}")
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * (p * (1 - p) / n + z**2 / (4 * n**2)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def _normal_quantile(level: float) -> float:
    """z with P(|Z| < z) = level for a standard normal Z (1.645 for 0.9, 1.96 for 0.95)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + level / 2)).item()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, D) and b (M, D):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_b^1/2 S_a S_b^1/2)^1/2), in float64."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature sets (N, D) with the same D and N >= 2, got {tuple(a.shape)} and {tuple(b.shape)}")
    return _frechet_to(a, _reference(b))


def kernel_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """KID: the unbiased estimator of MMD^2 between feature sets a (N, D) and b (M, D) with the polynomial kernel
    k(x, y) = (x.y / D + 1)^3 (Binkowski et al. 2018, "Demystifying MMD GANs", Eq. 4 and Sec. 4); in float64.

    mean_{i != j} k(a_i, a_j) + mean_{i != j} k(b_i, b_j) - 2 mean_{i, j} k(a_i, b_j): it can be slightly negative.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature sets (N, D) with the same D and N >= 2, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b, d = a.double(), b.double(), a.shape[1]

    def within(x):  # mean of k over pairs i != j
        k = (x @ x.T / d + 1) ** 3
        return (k.sum() - k.diagonal().sum()) / (len(x) * (len(x) - 1))

    return (within(a) + within(b) - 2 * ((a @ b.T / d + 1) ** 3).mean()).item()


def _reference(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, covariance, covariance^1/2) of a reference feature set, computed once for many FDs against it."""
    b = b.double()
    cov = torch.cov(b.T).reshape(b.shape[1], -1)
    vals, vecs = torch.linalg.eigh(cov)
    return b.mean(0), cov, vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T


def _frechet_to(a: torch.Tensor, reference) -> float:
    mu_b, cov_b, root_b = reference
    a = a.double()
    cov_a = torch.cov(a.T).reshape(a.shape[1], -1)
    cross = torch.linalg.eigvalsh(root_b @ cov_a @ root_b).clamp(min=0).sqrt().sum()  # tr (S_a S_b)^1/2
    return ((a.mean(0) - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross).item()


def nearest_distances(images: torch.Tensor, reference: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """For each image, the Euclidean pixel distance to its nearest image in `reference` (N,)."""
    ref = reference.flatten(1).float()
    return torch.cat([torch.cdist(images[i: i + batch_size].flatten(1).float().cpu(), ref).min(1).values
                      for i in range(0, len(images), batch_size)])


def within_class_distance(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean Euclidean pixel distance between two different images of the same label (NaN if no label has two)."""
    total, pairs = 0.0, 0
    for c in labels.unique():
        x = images[labels == c].flatten(1).float().cpu()
        if len(x) > 1:
            total += torch.pdist(x).sum().item()
            pairs += len(x) * (len(x) - 1) // 2
    return total / pairs if pairs else float("nan")


MAX_REFERENCE = 1000  # held-out real images the samples are compared with (a seeded subset of larger test splits)


class Evaluator:
    """Scores batches of samples against real images; load once, call many times.

    By default the bundled MNIST digits and the shipped classifier; with `classifier` (a file from
    `classifier.save_classifier`), the data set that classifier was trained on, read from `data_dir`
    (default: the folder recorded in the file).
    """

    def __init__(self, device="cpu", classifier=None, data_dir=None):
        self.classifier = load_classifier(device, path=classifier)
        info = self.classifier.dataset
        if info["name"] == "mnist" and info["image_size"] == 28:
            train, test = load_mnist(train=True, source="bundled"), load_mnist(train=False, source="bundled")
        else:
            root = data_dir or info.get("data_dir") or None
            kw = {"root": root, "image_size": info["image_size"], "channels": info["channels"] if info["name"] == "folder" else None}
            train, test = load_dataset(info["name"], True, **kw), load_dataset(info["name"], False, **kw)
            if train.class_names != info["class_names"]:
                raise ValueError(f"the classifier was trained on classes {info['class_names']}, but {train.source} has "
                                 f"{train.class_names}")
        self.class_names, self.shape = info["class_names"], self.classifier.shape
        self.train_images, self.train_labels = train.tensors()
        self.test_images, self.test_labels = test.tensors()
        if len(self.test_images) > MAX_REFERENCE:
            idx = torch.randperm(len(self.test_images), generator=torch.Generator().manual_seed(0))[:MAX_REFERENCE]
            self.test_images, self.test_labels = self.test_images[idx], self.test_labels[idx]
        _, self.test_features = classify(self.test_images, self.classifier)
        self.test_nearest = nearest_distances(self.test_images, self.train_images)  # real images' own distances

    def score(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        """The numbers of the module docstring for `images` (B, C, H, W) in [-1, 1], asked to be `labels`."""
        if images.ndim != 4 or tuple(images.shape[1:]) != self.shape:
            raise ValueError(f"expected images of shape (B, {', '.join(map(str, self.shape))}) as the classifier's data, "
                             f"got {tuple(images.shape)}")
        if labels is not None and labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        probs, feats = classify(images, self.classifier)
        predicted = probs.argmax(1)
        nearest = nearest_distances(images, self.train_images)
        return {
            "n": len(images),
            "accuracy": (accuracy := (predicted == labels.cpu()).float().mean().item() if labels is not None else None),
            "accuracy_ci": proportion_interval(accuracy, len(images)) if labels is not None else None,
            "confidence": probs.max(1).values.mean().item(),
            "histogram": torch.bincount(predicted, minlength=len(self.class_names)).tolist(),
            "diversity": within_class_distance(images, labels.cpu()) if labels is not None else None,
            "fd": frechet_distance(feats, self.test_features) if len(images) >= 2 else float("nan"),
            "kid": kernel_distance(feats, self.test_features) if len(images) >= 2 else float("nan"),
            "nearest": nearest.median().item(),  # median pixel distance to the nearest training digit
            "nearest_real": self.test_nearest.median().item(),  # the same for held-out real digits
            "copies": (nearest < self.test_nearest.quantile(0.01)).float().mean().item(),  # closer than 99 % of real
        }

    def fd_interval(self, images: torch.Tensor, num_boot: int = 200, level: float = 0.9, seed: int = 0) -> tuple[float, float]:
        """An interval for the FD of `images` that shows how much it moves with the draw of n samples:
        FD +- z * (standard deviation of the FD over bootstrap resamples of the samples; the held-out
        set stays fixed). Resampling repeats samples, which biases each replicate's FD upwards, so the
        interval is centred on the FD itself and only its width comes from the bootstrap."""
        fd, spread = self._fd_bootstrap([images], num_boot, seed)
        z = _normal_quantile(level)
        return max(0.0, fd - z * spread), fd + z * spread

    def fd_difference_interval(self, images_a: torch.Tensor, images_b: torch.Tensor, num_boot: int = 200, level: float = 0.9,
                               seed: int = 0) -> tuple[float, float, float]:
        """(FD(a) - FD(b), low, high) for two settings sampled from the same noise (sample i of both
        from the same x_T): a paired bootstrap resamples the same indices in both, so the noise they
        share cancels and the interval is much narrower than two separate ones. If it excludes 0,
        the n samples show a difference."""
        if images_a.shape != images_b.shape:
            raise ValueError(f"paired settings need the same number of images, got {tuple(images_a.shape)} and {tuple(images_b.shape)}")
        diff, spread = self._fd_bootstrap([images_a, images_b], num_boot, seed)
        z = _normal_quantile(level)
        return diff, diff - z * spread, diff + z * spread

    def _fd_bootstrap(self, sets: list[torch.Tensor], num_boot: int, seed: int) -> tuple[float, float]:
        """FD of one set (or FD(a) - FD(b) of two), and its standard deviation over paired bootstrap resamples."""
        if len(sets[0]) < 2:
            raise ValueError(f"need at least 2 images for an FD interval, got {len(sets[0])}")
        feats = [classify(x, self.classifier)[1] for x in sets]
        reference = _reference(self.test_features)

        def stat(idx):
            fds = [_frechet_to(f[idx], reference) for f in feats]
            return fds[0] if len(fds) == 1 else fds[0] - fds[1]

        g = torch.Generator().manual_seed(seed)
        n = len(feats[0])
        replicates = torch.tensor([stat(torch.randint(n, (n,), generator=g)) for _ in range(num_boot)])
        return stat(torch.arange(n)), replicates.std().item()

    def real_sample(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """n random real training images and their labels: the reference that `score_real` scores."""
        idx = torch.randperm(len(self.train_images), generator=torch.Generator().manual_seed(seed))[:n]
        return self.train_images[idx], self.train_labels[idx]

    def score_real(self, n: int, seed: int = 0) -> dict:
        """The reference row: n random real training digits, scored the same way (each one's
        nearest training image is itself, so the memorisation columns are left out)."""
        return {**self.score(*self.real_sample(n, seed)), "nearest": None, "copies": None}


def generate(model, diffusion, n: int, *, steps: int | None = 50, guidance_scale: float = 3.0, conditional: bool = True,
             seed: int = 0, batch_size: int = 250, ancestral: bool = False, sampler: str | None = None,
             progress: bool = False, classifier=None, classifier_scale: float = 0.0,
             spacing: str | None = None, autoencoder=None) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """n samples (labels 0, 1, ... in turn if `conditional`, else unconditional): (images, labels, seconds).

    `steps`: DDIM steps, or all T ancestral steps if None; with `ancestral=True`, ancestral DDPM
    respaced to `steps` (Nichol & Dhariwal 2021), which uses a model's learned variances. A `sampler`
    name (one of `samplers.SAMPLERS`) overrides both; `spacing` (None = the sampler's own) spreads its steps.
    `classifier` with `classifier_scale` adds classifier guidance (see `samplers.sample`).
    `progress` shows a bar over the sampling steps of each batch. A latent model's samples are decoded by its
    `autoencoder` (notebook 12); a prompt model is asked for each class by the class word alone.
    """
    from .latent import condition, num_labels, to_pixels

    device = next(model.parameters()).device
    if conditional and not num_labels(model):
        raise ValueError("this model is unconditional; evaluate it with conditional=False")
    sampler = sampler or ("ddpm" if ancestral or steps is None else "ddim")
    labels = torch.arange(n, device=device) % num_labels(model) if conditional else None
    generator = torch.Generator(device).manual_seed(seed)
    c, size = model.config.in_channels, model.config.image_size  # a latent model's: the latent's
    start, chunks = time.perf_counter(), []
    for i in range(0, n, batch_size):
        y = condition(model, labels[i: i + batch_size]) if conditional else None
        m = min(batch_size, n - i)
        x = sample(model, diffusion, (m, c, size, size), sampler=sampler, num_steps=steps, y=y,
                   guidance_scale=guidance_scale if conditional else 1.0, generator=generator, progress=progress,
                   classifier=classifier, classifier_scale=classifier_scale, spacing=spacing)
        chunks.append(to_pixels(x, autoencoder).cpu())
    return torch.cat(chunks), labels.cpu() if conditional else None, time.perf_counter() - start


def bits_per_dim(model, diffusion, images: torch.Tensor, labels: torch.Tensor | None = None, *, batch_size: int = 50,
                 seed: int = 0, progress: bool = False) -> dict:
    """The variational bound on -log2 p(x0) per dimension (Ho et al. 2020, Eq. 5) for `images` (N, C, H, W)
    on the 256 levels of [-1, 1]: all T terms (T network evaluations per image), `batch_size` images at a time.

    `labels` conditions a class-conditional model (None: the null label). Returns {"bpd": mean,
    "sem": its standard error over images, "terms_bpd" (T,): each L_t averaged, "prior_bpd": L_T, "n"}.
    """
    if diffusion.process == "flow":
        raise ValueError("bits/dim here is a diffusion's variational bound (Eq. 5); a flow model has no reverse chain to "
                         "bound (its likelihood would need the ODE's divergence along each path), so evaluate it without --nll")
    if images.ndim != 4 or len(images) < 2:
        raise ValueError(f"need images of shape (N, C, H, W) with N >= 2, got {tuple(images.shape)}")
    device = diffusion.betas.device  # the model's too (`sample` checks that they agree)
    generator = torch.Generator(device).manual_seed(seed)
    totals, terms, priors = [], [], []
    for i in range(0, len(images), batch_size):
        y = None if labels is None else labels[i: i + batch_size].to(device)
        b = diffusion.variational_bound(model, images[i: i + batch_size].to(device), y, generator=generator, progress=progress)
        totals.append(b["total_bpd"].cpu())
        terms.append(b["terms_bpd"].cpu())
        priors.append(b["prior_bpd"].cpu())
    total = torch.cat(totals).double()
    return {"bpd": total.mean().item(), "sem": (total.std() / len(total) ** 0.5).item(), "n": len(total),
            "terms_bpd": torch.cat(terms).mean(0), "prior_bpd": torch.cat(priors).mean().item()}


def format_table(rows: list[dict]) -> str:
    """A plain-text table of `Evaluator.score` results, each with a "setting" name and optional "seconds"."""
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    lines = [f"{'setting':<28} {'n':>5} {'accuracy':>8} {'confid.':>7} {'FD':>7} {'KID':>7} {'divers.':>7} {'NN dist':>7} "
             f"{'real NN':>7} {'copies':>6} {'top class':>9} {'s/image':>8}"]
    for r in rows:
        top = max(r["histogram"]) / r["n"]
        per_image = r["seconds"] / r["n"] if r.get("seconds") is not None else None
        lines.append(f"{r['setting']:<28} {r['n']:>5} {fmt(r['accuracy'], '8.1%')} {r['confidence']:>7.3f} {r['fd']:>7.2f} "
                     f"{fmt(r.get('kid'), '7.1f')} "
                     f"{fmt(r['diversity'], '7.2f')} "
                     f"{fmt(r['nearest'], '7.2f')} {r['nearest_real']:>7.2f} {fmt(r['copies'], '6.1%')} {top:>9.1%} "
                     f"{fmt(per_image, '8.3f')}")
    return "\n".join(lines)
