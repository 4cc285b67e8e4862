"""The `mimkit` command and every pretraining recipe, end to end on tiny models."""

import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import CPU_TRAINER

from mimkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN_RECIPES = sorted(glob.glob(str(ROOT / "recipes/pretrain/*.yaml"))) + sorted(
    glob.glob(str(ROOT / "recipes/quickstart/*.yaml"))
)

TINY_ENCODER = [
    "--model.encoder.init_args.patch_size",
    "8",
    "--model.encoder.init_args.model_kwargs",
    '{"depth": 1, "embed_dim": 64, "num_heads": 2}',
]
TINY_RUN = [
    *CPU_TRAINER,
    "--trainer.accumulate_grad_batches",
    "1",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.strategy",
    "auto",
]


def synthetic_data(batch_size: int = 4) -> list[str]:
    return [
        "--data",
        "mimkit.data.Synthetic",
        "--data.img_size",
        "32",
        "--data.batch_size",
        str(batch_size),
        "--data.num_samples",
        "16",
        "--data.num_val_samples",
        "4",
        "--data.num_workers",
        "0",
    ]


@pytest.mark.parametrize("recipe", PRETRAIN_RECIPES, ids=os.path.basename)
def test_every_pretrain_recipe_runs_two_steps(recipe, tmp_path):
    """No recipe can rot: each trains 2 steps with its own method and settings, tiny sizes."""
    args = [
        "pretrain",
        "fit",
        "--config",
        recipe,
        *synthetic_data(),
        *TINY_ENCODER,
        *TINY_RUN,
        "--trainer.max_steps",
        "2",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    if "compile_modules" in Path(recipe).read_text():
        args += ["--model.compile_modules", "false"]  # compiling is exercised in test_compile.py
    if "decoder_dim" in Path(recipe).read_text():
        args += [
            "--model.decoder_dim",
            "32",
            "--model.decoder_depth",
            "1",
            "--model.decoder_heads",
            "2",
        ]
    if "views" in Path(recipe).read_text():  # frame pairs from real videos: test_vicmae.py
        args += ["--data.num_frames", "null"]
    if "tubelet_size" in Path(recipe).read_text():  # video: 4-frame clips, tubelets of 2
        args += ["--data.num_frames", "4", "--model.encoder.init_args.num_frames", "4"]
    if "pred_frames" in Path(recipe).read_text():  # MAE-ST: half the frames, as 8 of 16
        args += ["--model.pred_frames", "2"]
        args += ["--model.encoder.init_args.tubelet_size", "2"]
    assert main(args) == 0
    ckpt = torch.load(tmp_path / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    import yaml

    model_class = yaml.safe_load(Path(recipe).read_text())["model"]["class_path"]
    assert ckpt["mimkit"]["method"] == model_class.rsplit(".", 1)[-1]
    configs = glob.glob(str(tmp_path / "lightning_logs/*/config.yaml"))
    assert configs, "the resolved config is saved in the run directory"


def test_a_ddp_recipe_trains_with_its_own_strategy_and_accumulation(tmp_path):
    """The recipe test swaps in Lightning's default strategy and accumulation 1; here the
    ViT-B recipe keeps its DDPStrategy and accumulates 2 batches (a static graph did not
    survive that: pytorch/pytorch#143580), on one CPU process. A subprocess each: a DDP
    process group left in the test process would hold its port for later DDP tests."""
    recipe = str(ROOT / "recipes/pretrain/mae_vit_base_patch16_in1k.yaml")
    args = [
        "pretrain", "fit", "--config", recipe, *synthetic_data(), *TINY_ENCODER, *CPU_TRAINER,
        "--trainer.limit_val_batches", "1", "--trainer.max_steps", "2",
        "--model.compile_modules", "false", "--model.decoder_dim", "32",
        "--model.decoder_depth", "1", "--model.decoder_heads", "2",
        "--trainer.default_root_dir", str(tmp_path),
    ]  # fmt: skip

    def mimkit(*extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "mimkit", *args, *extra]
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    done = mimkit()
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = torch.load(tmp_path / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    refused = mimkit("--trainer.strategy.init_args.static_graph", "true")
    assert refused.returncode == 2
    assert "static_graph=True with accumulate_grad_batches > 1" in refused.stderr


def test_no_recipe_combines_a_static_graph_with_accumulation():
    import yaml

    for recipe in PRETRAIN_RECIPES:
        trainer = yaml.safe_load(Path(recipe).read_text()).get("trainer", {})
        strategy = trainer.get("strategy")
        static = isinstance(strategy, dict) and strategy.get("init_args", {}).get("static_graph")
        assert not (static and trainer.get("accumulate_grad_batches", 1) > 1), recipe


def test_quickstart_recipe_trains_and_resumes(tmp_path):
    recipe = str(ROOT / "recipes/quickstart/mae_digits.yaml")
    common = [
        "pretrain",
        "fit",
        "--config",
        recipe,
        *TINY_RUN,
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.limit_train_batches",
        "3",
        "--model.encoder.init_args.model_kwargs",
        '{"depth": 2}',
        "--preview.every_n_steps",
        "2",
        "--checkpoint.every_n_epochs",
        "1",
    ]
    assert main([*common, "--trainer.max_epochs", "1"]) == 0
    first = torch.load(tmp_path / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert first["global_step"] == 3
    # saved at the end of the epoch (not only when training ends): the latest epoch checkpoint
    assert (tmp_path / "checkpoints/epoch=0-step=3.ckpt").exists()
    assert first["mimkit"]["encoder"]["img_size"] == 32  # linked from the data module
    assert len(first["mimkit"]["mean"]) == 3
    previews = sorted(os.listdir(tmp_path / "previews"))
    assert "step_0000002.png" in previews
    from PIL import Image

    with Image.open(tmp_path / "previews" / previews[0]) as image:
        assert image.size[0] > image.size[1] / 8 * 3 - 10  # 3 columns: original/masked/recon
    # resume: continue from last.ckpt for one more epoch
    assert main([*common, "--trainer.max_epochs", "2", "--ckpt_path", "last"]) == 0
    second = torch.load(tmp_path / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert second["global_step"] == 6
    assert second["optimizer_states"][0]["state"]  # AdamW moments restored and carried on


def test_config_typos_are_errors(tmp_path, capsys):
    recipe = str(ROOT / "recipes/quickstart/mae_digits.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "fit", "--config", recipe, "--model.decoder_dept", "2"])
    assert exit_info.value.code != 0
    typo = tmp_path / "typo.yaml"
    typo.write_text(Path(recipe).read_text().replace("norm_pix_loss:", "norm_pix_los:"))
    with pytest.raises(SystemExit):
        main(["pretrain", "fit", "--config", str(typo)])
    assert "norm_pix_los" in capsys.readouterr().err
    recipes = {
        "pretrain": recipe,
        "finetune": str(ROOT / "recipes/finetune/digits_quickstart.yaml"),
        "probe": str(ROOT / "recipes/probe/linear_digits_quickstart.yaml"),
    }
    for command, config in recipes.items():  # a prefix of a real option is a typo too
        with pytest.raises(SystemExit) as exit_info:
            main([command, "fit", "--config", config, "--trainer.max_step", "3"])
        assert exit_info.value.code != 0
        assert "--trainer.max_step 3" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--model.encoder.init_args.attn_backend", "xformers"], "attn_backend='xformers' was"),
        (["--data.class_path", "mimkit.data.ImageFolder", "--data.init_args.root", "/no/such"],
         "Image source /no/such does not exist"),
        (["--trainer.devices", "0"], "`Trainer(devices='0')` value is not a valid input"),
        (["--model.mask_repeats", "0"], "mask_repeats must be >= 1, got 0"),  # a constructor's
        (["--model.masking.mask_ratio", "1.5"], "mask_ratio must be in [0, 1), got 1.5"),
        (["--trainer.max_epochs", "-1"], "model.warmup_epochs needs trainer.max_epochs"),
    ],
)  # fmt: skip
def test_user_errors_are_one_line(override, message, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MIMKIT_TRACEBACK", raising=False)
    recipe = str(ROOT / "recipes/quickstart/mae_digits.yaml")
    args = ["pretrain", "fit", "--config", recipe, *CPU_TRAINER, *override,
            "--trainer.max_steps", "1", "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"mimkit pretrain: error: {message}" in err and "Traceback" not in err
    monkeypatch.setenv("MIMKIT_TRACEBACK", "1")
    with pytest.raises(Exception, match=re.escape(message.split(" was")[0].split(" does")[0])):
        main(args)


@pytest.mark.parametrize("command", ["pretrain", "finetune", "probe"])
def test_the_optimizer_is_only_the_models(command, capsys, recwarn):
    """No top-level --optimizer that would bypass lr scaling, decay groups and schedule."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, "fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--model" in out and "\n  --optimizer" not in out and "--lr_scheduler" not in out
    assert not [w for w in recwarn if "args parameter" in str(w.message)]


def test_help_documents_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "--trainer.max_epochs" in out and "--preview.every_n_steps" in out
    with pytest.raises(SystemExit):
        main(["pretrain", "fit", "--model.help", "mimkit.pretrain.MAE"])
    out = capsys.readouterr().out
    assert "norm_pix_loss" in out and "regress per-patch normalized pixels" in out
    assert out.startswith("usage: mimkit pretrain --model.encoder")


def test_pretrain_offers_only_the_subcommands_methods_implement(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--help"])
    assert exit_info.value.code == 0
    assert "{fit,validate}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # PretrainModule has no test_step
        main(["pretrain", "test", "--config", "recipes/quickstart/mae_digits.yaml"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'test' (choose from 'fit', 'validate')" in capsys.readouterr().err


def test_top_level_dispatch(capsys):
    assert main([]) == 0
    assert "pretrain" in capsys.readouterr().out
    assert main(["no-such-command"]) == 2


@pytest.mark.parametrize("recipe", PRETRAIN_RECIPES, ids=os.path.basename)
def test_recipe_strategies_instantiate(recipe):
    """The recipe test overrides the strategy for CPU; its own strategy must still be valid."""
    import yaml
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import Strategy

    strategy = yaml.safe_load(Path(recipe).read_text()).get("trainer", {}).get("strategy")
    if not isinstance(strategy, dict):
        pytest.skip("no strategy class in this recipe")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Strategy, "strategy")
    config = parser.parse_object({"strategy": strategy})
    instance = parser.instantiate_classes(config).strategy
    assert isinstance(instance, Strategy)
    if "FSDP" in strategy["class_path"]:
        from timm.models.vision_transformer import Block

        policy = instance.kwargs["auto_wrap_policy"]
        assert Block in getattr(policy, "_module_classes", policy)
        assert instance.kwargs["use_orig_params"] is True


def test_two_processes_on_one_machine_rerun_the_mimkit_command(tmp_path):
    """With several devices and no srun/torchrun, Lightning starts the other ranks by running
    the process's command line again; that must be the whole `mimkit <command> ...` line."""
    mimkit = Path(sys.executable).with_name("mimkit")
    assert mimkit.exists(), "the `mimkit` console script is installed next to the interpreter"
    two_processes = [*CPU_TRAINER, "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    two_processes += ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"]
    pretrain = ["pretrain", "fit", "--config", str(ROOT / "recipes/quickstart/mae_digits.yaml")]
    pretrain += TINY_ENCODER
    probe = ["probe", "fit", "--config", str(ROOT / "recipes/probe/linear_digits_quickstart.yaml")]
    probe += ["--model.init_from", str(tmp_path / "pretrain/checkpoints/last.ckpt")]
    for name, command in (("pretrain", pretrain), ("probe", probe)):
        root = ["--trainer.default_root_dir", str(tmp_path / name)]
        done = subprocess.run(
            [str(mimkit), *command, *two_processes, *root],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-3000:]
        assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output
        assert "litlogger" not in output  # Lightning's advert is filtered out
        last = tmp_path / name / "checkpoints/last.ckpt"
        assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ("pretrain/mae_vit_base_patch16_in1k.yaml", "Image source {} does not exist"),
        ("pretrain/videomae_vit_base_patch16_k400.yaml", "Video source {} does not exist"),
    ],
)
def test_a_missing_data_folder_stops_before_any_rank_starts(
    recipe, message, tmp_path, capsys, monkeypatch
):
    """The recipes ask for 8 devices: a wrong path must be one message from the launching
    process, not one per rank after Lightning has started them all."""
    monkeypatch.delenv("MIMKIT_TRACEBACK", raising=False)

    def fit(*args, **kwargs):
        raise AssertionError("Trainer.fit was reached")

    monkeypatch.setattr("lightning.pytorch.Trainer.fit", fit)
    missing = tmp_path / "missing"
    args = ["pretrain", "fit", "--config", str(ROOT / "recipes" / recipe), *TINY_ENCODER]
    args += ["--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path)]
    assert main([*args, "--data.root", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("error: " + message.format(missing)) == 1, err
