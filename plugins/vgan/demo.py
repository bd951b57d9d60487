"""The VGAN tab: sample grids of the VGAN and GAN generators (seed, count) with a toggle between them,
interpolation between two latent codes, VCD transition chains of an image (the paper's Fig. 5), and
where an image's energy falls among the energies of real and generated images.

The handlers (:meth:`VganDemo.samples`, :meth:`VganDemo.interpolate`, :meth:`VganDemo.transitions`,
:meth:`VganDemo.energy`, :meth:`VganDemo.analyse`) are plain functions returning dicts (images as
H×W×3 uint8 arrays), so tests and scripts use them directly; :func:`plugins.vgan.tab.build_demo` wraps
them for Gradio.
Checkpoints are loaded inside the handlers, never at start-up, and the rebuilt networks are kept (a
``ModelCache``) until the checkpoint file changes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from app.api import DemoContext, UserError
from app.api.demo import ModelCache, image_to_tensor, load_rgb_image
from plugins.vgan.model import EnergyNet, GanConfig, Generator, models_from_checkpoint
from plugins.vgan.recipes import energies, generate
from plugins.vgan.visuals import image_grid, to_uint8

MODELS = ("vgan", "gan", "vcd")  # the checkpoint slots, in the toggle's order (a slot's name is its kind)
TITLES = {"vgan": "VGAN", "gan": "GAN", "vcd": "VCD"}
WHAT = {"vgan": "the VGAN model of Algorithm 1", "gan": "the plain GAN baseline",
        "vcd": "the VCD transition model of Algorithm 2"}
# The toggle opens on the paper's model (Algorithm 1); the GAN is the baseline it is compared with
# (same networks, data and steps: plugins/vgan/recipes.py), VCD the transition model.
RECOMMENDED_MODEL = "vgan"
TRANSITION_MODEL = "vcd"  # only VCD has an encoder: the transitions always use it
DEFAULT_COUNT, MAX_COUNT = 64, 100
DEFAULT_STEPS, MIN_STEPS, MAX_STEPS = 8, 2, 16  # images in an interpolation, both ends included
DEFAULT_CHAIN, MAX_CHAIN = 9, 20  # VCD transition steps (Fig. 5 of the paper chains 9)
MAX_SEED = 2**31 - 1
PATHS = ("linear", "spherical")
HIST_BINS = 30
REAL, GENERATED, MARKER = "real images (held-out)", "generated images", "this image"


def how_to_train(name: str) -> str:
    """The message shown instead of a missing model: the command that trains it and where it goes."""
    return (f"No `{name}` checkpoint yet ({WHAT.get(name, name)}). Train it with:\n\n"
            f"    avstudio train vgan {name}\n\n"
            f"then promote the run's `{name}` checkpoint in the Runs tab (`avstudio runs promote RUN_ID`) "
            f"or place `{name}.safetensors` and its `{name}.json` card in assets/vgan/.")


def retrain(name: str) -> str:
    return (f"Retrain it with `avstudio train vgan {name}` and promote the run's `{name}` checkpoint "
            "(`avstudio runs promote RUN_ID`).")


def check_model(name: Any) -> str:
    if name not in MODELS:
        raise UserError(f"Choose a model: {', '.join(f'{TITLES[m]} ({m})' for m in MODELS)}; got {name!r}.")
    return str(name)


def check_int(value: Any, what: str, lo: int, hi: int) -> int:
    """A whole number in [lo, hi] (a UserError naming the range otherwise); 3.0 and "3" are fine."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer() or not lo <= number <= hi:
        raise UserError(f"The {what} must be a whole number from {lo} to {hi}, got {value!r}.")
    return int(number)


def check_seed(value: Any, what: str = "seed") -> int:
    return check_int(value, what, 0, MAX_SEED)


def picture(images: torch.Tensor, nrow: int) -> np.ndarray:
    """``images`` (N×C×H×W in [0, 1]) as one H×W×3 uint8 grid in rows of ``nrow``, 2 white pixels apart."""
    return np.asarray(image_grid(images, nrow=nrow, scale=1))


@dataclass
class Loaded:
    """One checkpoint's rebuilt networks (eval mode, on the demo device) and its card's metadata."""

    name: str
    cfg: GanConfig
    energy_net: EnergyNet
    generator: Generator
    metadata: dict[str, Any]

    @property
    def resolution(self) -> tuple[int, int]:
        return self.cfg.image_size, self.cfg.image_size

    def describe(self) -> str:
        """``vgan`` (VGAN, shapes, 3000 steps): what the captions say about the model."""
        parts = [TITLES[self.cfg.kind]]
        if self.metadata.get("dataset"):
            parts.append(str(self.metadata["dataset"]))
        steps = (self.metadata.get("budget") or {}).get("steps")
        if steps:
            parts.append(f"{steps} steps")
        return f"`{self.name}` ({', '.join(parts)})"


def energy_meaning(cfg: GanConfig) -> str:
    """What the energy of ``cfg``'s model is, for the captions."""
    if cfg.kind == "gan":
        return ("for the GAN the energy is −log D(x), from its discriminator's one sigmoid output "
                "(unbounded; not the experts' energy of VGAN)")
    return (f"Eq. 8: the sum of the binary entropies of K = {cfg.experts} experts, bounded in "
            f"[0, K log 2] = [0, {cfg.experts * math.log(2):.1f}]")


class VganDemo:
    """Answers the tab's requests; networks are loaded in the handlers and cached with their checkpoint."""

    def __init__(self, ctx: DemoContext) -> None:
        self.ctx = ctx
        self._models: ModelCache[Loaded] = ModelCache(ctx, missing=how_to_train)

    # -- models ------------------------------------------------------------------------------

    def model(self, name: str) -> Loaded:
        """The networks of checkpoint ``name`` (vgan | gan | vcd), or a UserError saying how to train them."""
        name = check_model(name)

        def build(checkpoint: Any) -> Loaded:
            try:
                cfg, energy_net, generator = models_from_checkpoint(checkpoint)
            except (KeyError, ValueError, TypeError, RuntimeError) as exc:
                first = (str(exc).splitlines() or [""])[0]
                raise UserError(f"Checkpoint `{name}` is not a VGAN-plugin model ({type(exc).__name__}: "
                                f"{first}). {retrain(name)}") from None
            if cfg.kind != name:
                raise UserError(f"Checkpoint `{name}` holds a {cfg.kind} model, not a {name} model. {retrain(name)}")
            device = self.ctx.device
            return Loaded(name, cfg, energy_net.to(device).eval(), generator.to(device).eval(),
                          dict(checkpoint.metadata))

        return self._models.get(name, build=build)

    def checkpoints_markdown(self) -> str:
        """One line: which of the three models are available (shipped or promoted; cards only, no model
        is loaded) and the command that trains a missing one."""
        found = {info.name: info for info in self.ctx.checkpoints()}
        parts = []
        for name in MODELS:
            info = found.get(name)
            if info is None:
                parts.append(f"{TITLES[name]}: not trained yet (`avstudio train vgan {name}`)")
                continue
            meta = info.metadata
            extra = [info.source]
            if meta.get("dataset"):
                extra.append(str(meta["dataset"]))
            steps = (meta.get("budget") or {}).get("steps")
            if steps:
                extra.append(f"{steps} steps")
            parts.append(f"{TITLES[name]}: `{name}` ({', '.join(extra)})")
        return "**Models:** " + " · ".join(parts)

    def model_input(self, image: Any, cfg: GanConfig) -> torch.Tensor:
        """An upload as the model's input: 1×C×S×S in [0, 1] (grey models get the luminance)."""
        pil = load_rgb_image(image)
        size = (cfg.image_size, cfg.image_size)
        if cfg.channels == 1:
            return image_to_tensor(pil.convert("L").convert("RGB"), size)[:, :1]
        return image_to_tensor(pil, size)

    # -- handlers ----------------------------------------------------------------------------

    @torch.inference_mode()
    def samples(self, model: str, seed: Any = 0, count: Any = DEFAULT_COUNT) -> dict[str, Any]:
        """``count`` samples of ``model``'s generator from the uniform codes of ``seed``, as a grid."""
        seed, count = check_seed(seed), check_int(count, "number of samples", 1, MAX_COUNT)
        m = self.model(model)
        start = time.perf_counter()
        images = generate(m.cfg, m.generator, count, seed=seed, device=self.ctx.device)
        elapsed_ms = (time.perf_counter() - start) * 1000
        nrow = math.ceil(math.sqrt(count))
        h, w = m.resolution
        note = ""
        if m.cfg.kind == "vcd":
            note = (" VCD is trained to transition real images, not to decode pure noise: these are its decoder "
                    "on uniform codes, for comparison; its transitions are below.")
        text = (f"{count} samples of {m.describe()}, seed {seed}, {w}×{h} each; generated in "
                f"{elapsed_ms:.0f} ms.{note}")
        return {"model": m.name, "seed": seed, "count": count, "resolution": (h, w),
                "images": to_uint8(images),  # count×H×W×3 uint8
                "grid": picture(images, nrow), "elapsed_ms": elapsed_ms, "text": text}

    @torch.inference_mode()
    def interpolate(self, model: str, seed_a: Any = 0, seed_b: Any = 1, steps: Any = DEFAULT_STEPS,
                    path: str = "linear") -> dict[str, Any]:
        """``steps`` images decoded from codes on the way from the code of ``seed_a`` to that of ``seed_b``
        (``linear``, or ``spherical``: along the great circle, keeping the code's norm)."""
        seed_a, seed_b = check_seed(seed_a, "first seed"), check_seed(seed_b, "second seed")
        steps = check_int(steps, "number of interpolation steps", MIN_STEPS, MAX_STEPS)
        if path not in PATHS:
            raise UserError(f"The interpolation path must be linear or spherical, got {path!r}.")
        m = self.model(model)
        za = m.generator.latent(1, generator=torch.Generator().manual_seed(seed_a))[0]
        zb = m.generator.latent(1, generator=torch.Generator().manual_seed(seed_b))[0]
        alphas = torch.linspace(0, 1, steps)
        codes = slerp(za, zb, alphas) if path == "spherical" else torch.lerp(za, zb, alphas[:, None])
        images = m.generator.decode(codes.to(self.ctx.device)).cpu()
        h, w = m.resolution
        text = (f"{steps} images of {m.describe()} decoded from codes on the {path} path from seed {seed_a} "
                f"(left) to seed {seed_b} (right). The ends are the first samples of those seeds.")
        return {"model": m.name, "seeds": (seed_a, seed_b), "path": path, "alphas": alphas.tolist(),
                "resolution": (h, w), "images": to_uint8(images),
                "strip": picture(images, steps), "text": text}

    @torch.inference_mode()
    def transitions(self, image: Any, steps: Any = DEFAULT_CHAIN, seed: Any = 0) -> dict[str, Any]:
        """A Markov chain of VCD transitions x → x̃ → x̃' … from the image (``steps`` of them, the first
        frame is the image as the model sees it), each: encode, replace a random half of the code by
        U[−1, 1] noise, decode; with each frame's energy under the VCD energy."""
        steps = check_int(steps, "number of transition steps", 1, MAX_CHAIN)
        seed = check_seed(seed, "noise seed")
        pil = load_rgb_image(image)
        m = self.model(TRANSITION_MODEL)
        device = self.ctx.device
        x = self.model_input(pil, m.cfg).to(device)
        rng = torch.Generator().manual_seed(seed)  # noise drawn on the CPU: the same chain on any device
        frames = [x.cpu()]
        for _ in range(steps):
            code = m.generator.mix(m.generator.encode(x).cpu(), rng)
            x = m.generator.decode(code.to(device))
            frames.append(x.cpu())
        chain = torch.cat(frames)
        chain_energies = [round(float(v), 4) for v in energies(m.cfg, m.energy_net, chain, device=device)]
        h, w = m.resolution
        text = (f"{m.describe()}: the image as the model sees it ({w}×{h}, left), then {steps} transition "
                f"step{'s' if steps > 1 else ''} (noise seed {seed}; {m.cfg.noise_ratio:.0%} of the code "
                f"replaced by noise each step). Energies: "
                + " → ".join(f"{e:.2f}" for e in chain_energies) + ".")
        uint8 = to_uint8(chain)
        return {"model": m.name, "seed": seed, "steps": steps, "input_resolution": (h, w),
                "model_input": uint8[0], "chain": list(uint8),  # steps + 1 frames, H×W×3 uint8
                "energies": chain_energies, "strip": picture(chain, steps + 1), "text": text}

    @torch.inference_mode()
    def energy(self, image: Any, model: str = RECOMMENDED_MODEL) -> dict[str, Any]:
        """The image's energy under ``model``'s energy net, and where it falls among the energies of
        the held-out real images and of generated images that the model's card keeps."""
        pil = load_rgb_image(image)
        m = self.model(model)
        x = self.model_input(pil, m.cfg)
        value = float(energies(m.cfg, m.energy_net, x, device=self.ctx.device)[0])
        stored = m.metadata.get("energies") or {}
        real = np.asarray(stored.get("real") or [], np.float64)
        generated = np.asarray(stored.get("generated") or [], np.float64)
        hist = histogram(real, generated, value)
        h, w = m.resolution
        seen = to_uint8(x)[0]
        pct_real = percent_below(real, value)
        pct_gen = percent_below(generated, value)
        sentence = f"**E(x) = {value:.3f}** under {m.describe()} ({energy_meaning(m.cfg)}). "
        if pct_real is None:
            sentence += "The card keeps no energies of real and generated images to compare with (retrain it)."
        else:
            sentence += (f"{pct_real:.0f} % of the {len(real)} held-out real images have a lower energy "
                         f"(percentile {pct_real:.0f} among real images)")
            if pct_gen is not None:
                sentence += f", and {pct_gen:.0f} % of the {len(generated)} generated images"
            where = ("at or below the median real image's" if pct_real <= 50 else
                     "above the median real image's" if pct_real < 95 else "above almost every real image's")
            sentence += f". Lower energy = more data-like to the model: this image's is {where}."
        return {"model": m.name, "energy": value, "percentile_real": pct_real, "percentile_generated": pct_gen,
                "input_resolution": (h, w), "model_input": seen, "histogram": hist, "rows": hist["rows"],
                "text": sentence}

    def analyse(self, image: Any, model: str = RECOMMENDED_MODEL, steps: Any = DEFAULT_CHAIN,
                seed: Any = 0) -> dict[str, Any]:
        """The VCD chain and the energy of one image (one bad-image error, before anything runs); a panel
        whose model is missing gets a ``message`` instead, and a UserError when both are missing."""
        pil = load_rgb_image(image)
        check_model(model)
        steps = check_int(steps, "number of transition steps", 1, MAX_CHAIN)
        seed = check_seed(seed, "noise seed")
        out: dict[str, Any] = {}
        for key, run in (("transitions", lambda: self.transitions(pil, steps, seed)),
                         ("energy", lambda: self.energy(pil, model))):
            try:
                out[key] = {**run(), "message": None}
            except UserError as exc:
                out[key] = {"message": str(exc)}
        if out["transitions"]["message"] and out["energy"]["message"]:
            messages = [out["transitions"]["message"]]
            if out["energy"]["message"] != messages[0]:
                messages.append(out["energy"]["message"])
            raise UserError("\n\n".join(messages))
        return out


def slerp(a: torch.Tensor, b: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between codes ``a`` and ``b`` (d,) at ``alphas`` (n,): n×d (linear when
    the codes are nearly parallel)."""
    na, nb = a.norm(), b.norm()
    cos = (a @ b / (na * nb).clamp_min(1e-12)).clamp(-1, 1)
    omega = torch.arccos(cos)
    if omega.abs() < 1e-4:
        return torch.lerp(a, b, alphas[:, None])
    t = alphas[:, None]
    direction = (torch.sin((1 - t) * omega) * a / na + torch.sin(t * omega) * b / nb) / torch.sin(omega)
    return direction * torch.lerp(na, nb, t)  # the norm goes from |a| to |b|


def percent_below(values: np.ndarray, value: float) -> float | None:
    """The share (in %) of ``values`` below ``value`` (ties count half); None when there are none."""
    if len(values) == 0:
        return None
    return float(100 * ((values < value).mean() + 0.5 * (values == value).mean()))


def histogram(real: np.ndarray, generated: np.ndarray, value: float, bins: int = HIST_BINS) -> dict[str, Any]:
    """Shared bins over the real and generated energies and the marker; ``rows`` are the line plot's
    points (energy, share of images, images): one polygon per set (the share in each bin, at its
    centre) and a vertical line at the marker, as tall as the highest bin."""
    everything = np.concatenate([real, generated, [value]])
    lo, hi = float(everything.min()), float(everything.max())
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    shares = {}
    rows: list[dict[str, Any]] = []
    for label, values in ((REAL, real), (GENERATED, generated)):
        if len(values) == 0:
            continue
        counts, _ = np.histogram(values, edges)
        shares[label] = counts / len(values)
        rows += [{"energy": float(c), "share of images": float(s), "images": label}
                 for c, s in zip(centres, shares[label], strict=True)]
    top = max((float(s.max()) for s in shares.values()), default=1.0) or 1.0
    rows += [{"energy": float(value), "share of images": 0.0, "images": MARKER},
             {"energy": float(value), "share of images": top, "images": MARKER}]
    return {"edges": edges.tolist(), "real": shares.get(REAL, np.zeros(0)).tolist(),
            "generated": shares.get(GENERATED, np.zeros(0)).tolist(), "marker": float(value), "rows": rows}
