"""The training program: the reference loop on MNIST, with a run folder, checkpoints and resume.

``examples/train_mnist.py`` is a thin wrapper around ``main``. A run folder holds

    config.json          the recipe of the run
    metrics.jsonl        one JSON line per epoch (Loss_D, Loss_G, D(x), D(G(z)), seconds, images/s)
    samples/epoch_NNN.png  G in eval mode on the run's fixed noise (32 images, 8 per row)
    checkpoint.npz       everything needed to resume (see minigan.checkpoint), rewritten every epoch
    generator.npz        the final generator
    losses.png, samples.gif, interpolation.png   drawn at the end (minigan.plots)
    evaluation.json      with --evaluate: the generator's metrics (minigan.evaluate)

Every failure a user can cause (bad arguments, missing or corrupt data, no GPU, a NaN, a signal) ends
with one line on stderr and a non-zero exit status: 2 for bad arguments, 1 for other errors,
128 + signal number after SIGINT/SIGTERM (the current step is finished and a checkpoint written first).
"""

import functools
import json
import signal
import sys
import time
from pathlib import Path

import numpy as np

from minigan import checkpoint as ckpt
from minigan.backend import BACKENDS, BackendError, get_backend
from minigan.cli import ArgumentParser, UsageError
from minigan.data import DataError, load_mnist
from minigan.evaluate import EvaluationError
from minigan.fileio import FileWriter, atomic_write_bytes
from minigan.gan import GAN
from minigan.images import save_grid
from minigan.plots import PlotError, write_plots
from minigan.recipe import DEFAULT_EPOCHS, RECIPE, RULES, first_broken_rule

FIXED_NOISE = 32


class TrainingError(Exception):
    """Training cannot go on (non-finite values); reported in one line with exit status 1."""


class Interrupted(Exception):
    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum


def build_parser():
    p = ArgumentParser(prog="train_mnist.py", description="Train the MLP GAN of Goodfellow et al. (2014) on MNIST.")
    p.add_argument("--backend", default="numpy", help=f"one of {', '.join(BACKENDS)} (default numpy)")
    p.add_argument("--epochs", type=int, help=f"total epochs (default {DEFAULT_EPOCHS})")
    p.add_argument("--batch-size", type=int, help="images per step (default 128)")
    p.add_argument("--lr", type=float, help="Adam learning rate of G and D (default 2e-4)")
    p.add_argument("--beta1", type=float, help="Adam beta1 (default 0.5; beta2 is 0.999)")
    p.add_argument("--k", type=int, help="discriminator updates per batch (default 1)")
    p.add_argument("--latent-dim", type=int, help="size of z (default 100)")
    p.add_argument("--seed", type=int, help="random seed (default 666)")
    p.add_argument("--train-size", type=int, help="use the first N training images (default all 60000)")
    p.add_argument("--data-dir", type=Path, help="folder with the MNIST IDX files (default $MINIGAN_DATA, else ./data)")
    p.add_argument("--out", type=Path, help="run folder (default runs/<date-time>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--evaluate", action="store_true",
                   help="at the end, measure the generator (FID-MNIST, modes, precision/recall) into evaluation.json")
    return p


def check_recipe(config):
    """Refuse values that cannot train (minigan.recipe's rules), before anything is loaded."""
    key = first_broken_rule(config)
    if key is not None:
        raise UsageError(f"--{key.replace('_', '-')} must be {RULES[key][1]}, got {config[key]}")


def resolve(args):
    """The run's config, run folder and checkpoint arrays (None for a new run) from the command line."""
    if args.backend not in BACKENDS:
        raise UsageError(f"unknown backend {args.backend!r}: choose one of {', '.join(BACKENDS)}")
    given = {key: getattr(args, key) for key in RECIPE if getattr(args, key) is not None}
    if args.resume is not None:
        run_dir = args.resume
        if args.out is not None and args.out.resolve() != run_dir.resolve():
            raise UsageError("--out and --resume name different folders; --resume continues in its own folder")
        path = run_dir / "checkpoint.npz"
        arrays = ckpt.load_npz(path)
        config = ckpt.read_config(arrays, path)
        changed = [k for k, v in given.items() if v != config[k]]
        if changed:
            key = changed[0]
            raise UsageError(f"--{key.replace('_', '-')} {given[key]} differs from the run's {config[key]}: "
                             f"a resumed run keeps its recipe")
        config["epochs"] = args.epochs if args.epochs is not None else config["epochs"]
        done = ckpt.count(arrays, "epoch", path)
        if config["epochs"] <= done and ckpt.count(arrays, "step", path) == 0:
            raise UsageError(f"{run_dir} has already trained {done} epochs; pass --epochs above {done} to go on")
    else:
        run_dir = args.out if args.out is not None else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        if (run_dir / "checkpoint.npz").exists():
            raise UsageError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick another "
                             f"--out")
        arrays = None
        config = {**RECIPE, **given, "epochs": args.epochs if args.epochs is not None else DEFAULT_EPOCHS}
    check_recipe(config)
    return config, run_dir, arrays


def prepare_run_dir(run_dir):
    try:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / ".write-test", b"")
        (run_dir / ".write-test").unlink()
    except OSError as e:
        raise UsageError(f"{run_dir}: run folder is not writable ({e.strerror or e})") from None


class Progress:
    """A one-line progress bar within an epoch, redrawn at most 10 times a second, on a terminal only."""

    def __init__(self, total, label, stream=None, enabled=None):
        stream = sys.stderr if stream is None else stream  # at call time: sys.stderr may have been replaced
        self.total, self.label, self.stream = total, label, stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.start = self.last = time.perf_counter()

    def update(self, done, images):
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.1 and done < self.total):
            return
        self.last = now
        width = 30
        filled = width * done // self.total
        rate = images / max(now - self.start, 1e-9)
        self.stream.write(f"\r{self.label} {done}/{self.total} [{'=' * filled}{' ' * (width - filled)}] "
                          f"{rate:,.0f} img/s")
        self.stream.flush()

    def close(self):
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it after every step, so the step in flight completes."""

    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame):
        self.signum = signum

    def __enter__(self):
        self.previous = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class Run:
    """One training run: the GAN, its data, its folder, and where it stands."""

    def __init__(self, config, backend, images, run_dir, arrays=None, log=print):
        self.config, self.backend, self.images, self.run_dir, self.log = config, backend, images, run_dir, log
        xp = backend.xp
        self.gan = GAN(backend, config["latent_dim"], config["lr"], (config["beta1"], 0.999), config["k"],
                       config["seed"])
        self.fixed_z = self.gan.sample_noise(FIXED_NOISE)  # drawn first, as the reference does
        self.epoch, self.step, self.perm, self.history = 0, 0, None, []
        self.sums = xp.zeros(4)
        n = len(images)
        self.steps_per_epoch = -(-n // config["batch_size"])
        if arrays is not None:
            self.restore(arrays, run_dir / "checkpoint.npz")
        self.files = FileWriter()

    def restore(self, arrays, path):
        """Take up the run where the checkpoint's arrays left it; CheckpointError where they do not fit."""
        ckpt.load_gan(arrays, self.gan, path)
        self.fixed_z = self.backend.asarray(ckpt.array(arrays, "fixed_z", path, self.fixed_z.shape), dtype=np.float32)
        self.epoch, self.step = ckpt.count(arrays, "epoch", path), ckpt.count(arrays, "step", path)
        self.history = ckpt.json_entry(arrays, "history", path, list)
        if not ckpt.is_history(self.history):
            raise ckpt.CheckpointError(f"{path}: 'history' is not a list of epochs' metrics")
        if self.step:  # stopped inside an epoch: its shuffle of these images, and its sums so far
            n = len(self.images)
            self.perm = ckpt.array(arrays, "perm", path, (n,), "iu")
            if self.step >= self.steps_per_epoch or not np.array_equal(np.sort(self.perm), np.arange(n)):
                raise ckpt.CheckpointError(f"{path}: 'step' and 'perm' are not a place in an epoch over {n} images")
            self.sums = self.backend.xp.asarray(ckpt.array(arrays, "sums", path, (4,)))

    def checkpoint_arrays(self):
        arrays = ckpt.gan_arrays(self.gan)
        arrays.update(
            format_version=np.int64(ckpt.FORMAT_VERSION), config=ckpt.text(self.config),
            fixed_z=self.backend.to_numpy(self.fixed_z), epoch=np.int64(self.epoch), step=np.int64(self.step),
            perm=np.asarray(self.perm if self.step else np.zeros(0, np.int64)),
            sums=np.array(self.backend.to_numpy(self.sums)), history=ckpt.text(self.history),
        )
        return arrays

    def save_checkpoint(self, background=False):
        """Write checkpoint.npz from a snapshot of the run; with ``background``, by the run's file writer while
        training goes on (the epoch-end checkpoint), else before returning (a stop: nothing may be left)."""
        xp = self.backend.xp
        if not (bool(xp.isfinite(self.gan.G.params).all()) and bool(xp.isfinite(self.gan.D.params).all())):
            raise TrainingError(f"non-finite parameters at epoch {self.epoch + 1}; not saved; last good "
                                f"checkpoint: {self.last_checkpoint()}")
        arrays = self.checkpoint_arrays()
        self.files.put(self.run_dir / "checkpoint.npz", lambda path: ckpt.save_npz(path, arrays))
        if not background:
            self.wait_for_files()

    def wait_for_files(self):
        """Finish every file the writer holds; raise the error of a write that failed, if one did."""
        self.files.wait()
        self.files.raise_error()

    def last_checkpoint(self):
        """The checkpoint on disk, described for a message, once the files being written are."""
        self.files.wait()
        return ckpt.describe(self.run_dir / "checkpoint.npz")

    def check_finite(self, step_stats, upto):
        """Raise TrainingError naming the first step (of steps [0, upto)) whose losses are not finite."""
        stats = self.backend.to_numpy(step_stats[:upto])
        bad = np.flatnonzero(~np.isfinite(stats).all(axis=1))
        if bad.size:
            s = int(bad[0])
            raise TrainingError(
                f"non-finite loss at epoch {self.epoch + 1} step {s + 1} (Loss_D={stats[s, 0]}, "
                f"Loss_G={stats[s, 1]}); stopped; last good checkpoint: {self.last_checkpoint()}")

    def train(self, stop=None, progress_stream=None):
        """Train up to config["epochs"]; check ``stop`` (a StopFlag) after every step."""
        try:
            self._train(stop, progress_stream)
        finally:  # whatever stopped training, the files being written are completed, not cut off
            self.files.wait()

    def _train(self, stop, progress_stream):
        config, backend, xp = self.config, self.backend, self.backend.xp
        n, bs = len(self.images), config["batch_size"]
        images = backend.upload_images(self.images)
        step_stats = xp.zeros((self.steps_per_epoch, 4))
        while self.epoch < config["epochs"]:
            if self.step == 0:
                self.perm = self.gan.rng.permutation(n)
                self.sums[...] = 0
            perm = backend.asarray(self.perm)
            label = f"Epoch {self.epoch + 1}/{config['epochs']}"
            progress = Progress(self.steps_per_epoch, label, progress_stream)
            start, first_step = time.perf_counter(), self.step
            while self.step < self.steps_per_epoch:
                count = min(bs, n - self.step * bs)
                # straight into the rows the step reads: no copy between the gather and the step
                real = backend.gather_batch(images, perm, self.step * bs, count, self.gan.batch_input(count))
                stats = self.gan.train_step(real)
                step_stats[self.step] = stats
                self.sums += stats * count
                self.step += 1
                progress.update(self.step, (self.step - first_step) * bs)
                if stop is not None and stop.signum is not None:
                    progress.close()
                    self.check_finite(step_stats, self.step)
                    self.save_checkpoint()
                    name = signal.Signals(stop.signum).name
                    raise Interrupted(stop.signum, f"{name}: stopped at epoch {self.epoch + 1} step {self.step}; "
                                      f"checkpoint saved; continue with --resume {self.run_dir}")
            progress.close()
            self.check_finite(step_stats, self.step)
            backend.synchronize()
            seconds = time.perf_counter() - start
            means = backend.to_numpy(self.sums) / n
            record = {"epoch": self.epoch + 1, **{k: float(v) for k, v in zip(ckpt.METRICS, means)},
                      "seconds": round(seconds, 3),
                      "images_per_s": round((n - first_step * bs) / max(seconds, 1e-9), 1)}
            self.history.append(record)
            self.epoch, self.step = self.epoch + 1, 0
            # what each file holds is bound now: the writer may get to it epochs later, and a lambda would then
            # read this loop's names as they are by then (a later epoch's samples in this epoch's grid)
            self.files.put(self.run_dir / "samples" / f"epoch_{self.epoch:03d}.png",
                           functools.partial(save_grid, images=backend.to_numpy(self.gan.generate(self.fixed_z))))
            self.save_checkpoint(background=True)
            self.files.put(self.run_dir / "metrics.jsonl", functools.partial(write_metrics, history=list(self.history)))
            self.log(format_epoch(record, config["epochs"]))
        self.wait_for_files()
        self.save_generator()

    def save_generator(self):
        arrays = {"format_version": np.int64(ckpt.FORMAT_VERSION), "config": ckpt.text(self.config),
                  "epoch": np.int64(self.epoch), **ckpt.model_arrays("G", self.gan.G)}
        ckpt.save_npz(self.run_dir / "generator.npz", arrays)


def write_metrics(path, history):
    """metrics.jsonl from the whole history (rewritten, so a resumed run never repeats a line)."""
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in history).encode())


def format_epoch(r, epochs):
    return (f"Epoch [{r['epoch']}/{epochs}] | Loss_D: {r['loss_D']:.4f} | Loss_G: {r['loss_G']:.4f} | "
            f"D(x): {r['D_x']:.3f} | D(G(z)): {r['D_G_z']:.3f} | {r['seconds']:.1f} s | "
            f"{r['images_per_s']:,.0f} img/s")


def main(argv=None):
    prog = "train_mnist.py"
    started, run = time.perf_counter(), None
    try:
        args = build_parser().parse_args(argv)
        config, run_dir, arrays = resolve(args)
        backend = get_backend(args.backend)
        images, _ = load_mnist(args.data_dir)
        if config["train_size"] is not None:
            if config["train_size"] > len(images):
                raise UsageError(f"--train-size {config['train_size']} exceeds the {len(images)} training images")
            images = images[: config["train_size"]]
        if config["batch_size"] > len(images):
            raise UsageError(f"--batch-size {config['batch_size']} exceeds the {len(images)} training images")
        if len(images) % config["batch_size"] == 1:
            raise UsageError(f"{len(images)} images in batches of {config['batch_size']} leave a last batch of 1, "
                             f"and BatchNorm needs 2 rows: change --batch-size or --train-size")
        prepare_run_dir(run_dir)  # only now: a run refused above leaves no folder behind
        if arrays is None:
            atomic_write_bytes(run_dir / "config.json", (json.dumps(config, indent=2) + "\n").encode())
        run = Run(config, backend, images, run_dir, arrays)
        steps = f"{run.steps_per_epoch} step{'s' if run.steps_per_epoch != 1 else ''}"
        print(f"minigan: {args.backend} on {backend.device}; {len(images)} images, {steps} per epoch; "
              f"run folder {run_dir}", flush=True)
        # Overflow or NaN is caught by Run.check_finite and reported in one line; numpy's own warnings
        # would only add noise before it.
        first_epoch, training = run.epoch, time.perf_counter()
        with StopFlag() as stop, np.errstate(all="ignore"):
            run.train(stop)
        # The wall time after start-up (imports, data, model): every epoch with its sample grid and checkpoint,
        # kernel compilation and the GEMM tiles' timing included, the final plots not
        done = time.perf_counter()
        print(f"minigan: done: {run.epoch - first_epoch} epochs in {done - training:.1f} s after "
              f"{training - started:.1f} s of start-up; generator saved to {run_dir / 'generator.npz'}")
        write_plots(run_dir, backend)
        if args.evaluate:
            from minigan import evaluate

            images = evaluate.generate(run.gan.G, config["latent_dim"], 10000, backend)
            result = evaluate.evaluate_images(images, args.data_dir, log=lambda s: print(s, file=sys.stderr))
            line = json.dumps(result)
            atomic_write_bytes(run_dir / "evaluation.json", (line + "\n").encode())
            print(line)
        return 0
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except (DataError, BackendError, ckpt.CheckpointError, TrainingError, EvaluationError, PlotError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except MemoryError as e:  # NumPy's, or CuPy's OutOfMemoryError on the GPU (a MemoryError too)
        saved = f"; last good checkpoint: {run.last_checkpoint()}" if run is not None else ""
        print(f"{prog}: error: out of memory ({e}){saved}", file=sys.stderr)
        return 1
    except OSError as e:  # writing into the run folder failed (disk full, permissions changed)
        print(f"{prog}: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:  # before or after the training loop (which saves on SIGINT itself)
        print(f"{prog}: interrupted outside the training loop; no training state was lost", file=sys.stderr)
        return 128 + signal.SIGINT
