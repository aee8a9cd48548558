"""What `deeplense` says, as a script sees it: refusals that name what differs, no 'wrote' where nothing was written, a
sub-command's own name in argparse errors. Each test is a few tiny Model II simulations (64x64) in subprocesses."""
import hashlib
from pathlib import Path

from conftest import deeplense, ok, refused, user_env


def tree_digest(path: Path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_shard_is_refused_beside_the_complete_dataset(tmp_path):
    "The README's `--shard 2/8` into the folder of the complete dataset: refused, nothing written, the folder still reads."
    e, out, parts = user_env(tmp_path), tmp_path / "whole", tmp_path / "parts"
    ok(deeplense("simulate", "--n", 8, "--out", out, "--quiet", env=e))
    before = tree_digest(out)
    refused(deeplense("simulate", "--n", 8, "--out", out, "--shard", "2/8", "--quiet", env=e),
            "already holds the complete dataset", "--shard 2/8 is not needed", "nothing was written")
    assert tree_digest(out) == before
    ok(deeplense("simulate", "--n", 8, "--out", parts, "--shard", "1/2", "--quiet", env=e))
    refused(deeplense("simulate", "--n", 8, "--out", parts, "--quiet", env=e),            # the complete one beside a part
            "holds parts [1] of 2 of this dataset", "--shard I/2", "not without --shard")
    assert sorted(p.name for p in parts.iterdir()) == ["images-00001-of-00002.npy", "labels-00001-of-00002.csv",
                                                       "manifest-00001-of-00002.json"]
    ok(deeplense("simulate", "--n", 8, "--out", parts, "--shard", "0/2", "--quiet", env=e))  # the same layout: still fine
    assert "8 images of 64x64, preset model_ii, seed 0, 2 parts" in ok(deeplense("info", parts, env=e)).stdout


def test_a_different_dataset_is_named_by_what_differs(tmp_path):
    "Only the noise stream differs: the refusal names it (the values the user typed are not the difference)."
    e, out = user_env(tmp_path), tmp_path / "ds"
    ok(deeplense("simulate", "--n", 4, "--out", out, "--noise-stream", "counter", "--quiet", env=e))
    refused(deeplense("simulate", "--n", 4, "--out", out, "--quiet", env=e),
            "holds a different dataset (noise stream counter, asked generator)")
    refused(deeplense("simulate", "--n", 4, "--seed", 1, "--out", out, "--noise-stream", "counter", env=e),
            "(seed 0, asked 1)")
    assert "noise on, noise stream counter" in ok(deeplense("info", out, env=e)).stdout.splitlines()[0]


def test_counter_stream_without_noise_is_refused(tmp_path):
    r = deeplense("simulate", "--n", 4, "--out", tmp_path / "x", "--noise-stream", "counter", "--no-noise",
                  env=user_env(tmp_path))
    refused(r, "--noise-stream counter", "--no-noise", "needs noise")
    assert not (tmp_path / "x").exists()


def test_a_complete_dataset_is_not_said_to_be_written(tmp_path):
    e, out = user_env(tmp_path), tmp_path / "x"
    first = ok(deeplense("simulate", "--n", 4, "--out", out, "--quiet", env=e))
    assert first.stdout == f"wrote {out}: 4 images [0, 4) of 4, preset model_ii, format native\n"
    again = ok(deeplense("simulate", "--n", 4, "--out", out, env=e))
    assert again.stdout == f"{out}: already complete, 4 images [0, 4) of 4, nothing written\n"
    assert "already complete and verified" in again.stderr


def test_unknown_argument_names_the_command(tmp_path):
    r = deeplense("combine", "--model", tmp_path / "run", tmp_path / "a.npy", "--samples", "3")   # predict's, not combine's
    line = refused(r, "deeplense combine: error: unrecognized arguments: --samples")
    assert line.startswith("deeplense combine:")
    refused(deeplense("--bad"), "deeplense: error: unrecognized arguments: --bad")


def test_combine_says_what_it_wrote(tiny_flow, tiny_data, tmp_path):
    "Like predict and evaluate: each file written is named on stdout."
    run, _ = tiny_flow
    j, png = tmp_path / "joint.json", tmp_path / "joint.png"
    r = ok(deeplense("combine", "--model", run, tiny_data.data, "--json", j, "--plot", png, env=tiny_data.env))
    assert f"wrote {j}\n" in r.stdout and f"wrote {png}\n" in r.stdout and j.exists() and png.exists()
