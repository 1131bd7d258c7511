"""Bad command lines are answered before any work, in one line, with the closest valid names (in-process CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovmap import __version__
from ovmap.cli import entrypoint, split_positional_texts

SMALL = ["dataset.preset=test", "device=cpu", "progress=false"]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        entrypoint(list(args))
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ovmap: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_unknown_group_choice_names_the_closest(capsys, tmp_path):
    code, out, err = run_cli(capsys, "map", "encoder=oracel", f"out_dir={tmp_path}")
    line = one_error_line(err)
    assert code == 2 and out == ""
    assert line.startswith("ovmap: error: unknown encoder 'oracel': did you mean 'oracle'")
    assert "radseg" in line  # the valid choices are listed
    assert not (tmp_path / "map.npz").exists()


def test_unknown_key_names_the_closest_and_never_suggests_plus(capsys, tmp_path):
    code, _, err = run_cli(capsys, "map", "mapping.voxl_size=0.1", f"out_dir={tmp_path}")
    line = one_error_line(err)
    assert code == 2
    assert "unknown key 'mapping.voxl_size': did you mean 'mapping.voxel_size'" in line
    assert "+" not in line


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (["mapping.voxel_size=inf"], "mapping.voxel_size must be finite, got inf"),
        (["mapping.voxel_size=nan"], "mapping.voxel_size must be finite"),
        (["mapping.voxel_size=0"], "mapping.voxel_size must be > 0, got 0"),
        (["mapping.voxel_size=abc"], "mapping.voxel_size must be a number, got 'abc'"),
        (["mapping.mode=probabilty"], "mapping.mode must be one of feature, probability; got 'probabilty' "
                                      "(did you mean 'probability'?)"),
        (["mapping.min_depth=-0.1"], "mapping.min_depth must be >= 0"),
        (["mapping.min_depth=2", "mapping.max_depth=1"], "mapping.max_depth (1) must be greater than "
                                                         "mapping.min_depth (2)"),
        (["dataset.frame_skip=-1"], "dataset.frame_skip must be >= 0"),
        (["mapping.feature_sampling=cubic"], "mapping.feature_sampling must be one of"),
    ],
)
def test_value_out_of_range_is_rejected_before_work(capsys, tmp_path, override, expected):
    code, out, err = run_cli(capsys, "map", *SMALL, *override, f"out_dir={tmp_path}")
    assert code == 2 and expected in one_error_line(err)
    assert out == "" and not (tmp_path / "map.npz").exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("eval.k=-1", "eval.k must be >= 0, got -1"),
        ("eval.k=2.5", "eval.k must be an integer, got 2.5"),
        ("eval.prediction_thresh=1.5", "eval.prediction_thresh must be >= 0 and <= 1, got 1.5"),
        ("eval.independent_threshold=2", "eval.independent_threshold must be >= -1 and <= 1"),
    ],
)
def test_eval_settings_checked_up_front(capsys, tmp_path, override, expected):
    code, _, err = run_cli(capsys, "eval", *SMALL, override, f"out_dir={tmp_path}", "use_cache=false")
    assert code == 2 and expected in one_error_line(err)


def test_multirun_checks_every_swept_value(capsys, tmp_path):
    code, _, err = run_cli(capsys, "eval", "-m", *SMALL, "mapping.voxel_size=0.1,-2", f"out_dir={tmp_path}")
    assert code == 2 and "mapping.voxel_size must be > 0, got -2" in one_error_line(err)


def test_unwritable_output_folder_is_reported_before_mapping(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, out, err = run_cli(capsys, "map", *SMALL, f"out_dir={blocker / 'out'}")
    line = one_error_line(err)
    assert code == 2 and out == ""
    assert f"cannot write to {blocker / 'out'}: {blocker} is not a folder" in line


def test_version_and_command_help(capsys):
    entrypoint(["--version"])
    assert capsys.readouterr().out.strip() == f"ovmap {__version__}"
    entrypoint(["map", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("ovmap map: integrate a dataset into a voxel map")
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "voxel edge in metres" in lines["mapping.voxel_size"]
    assert "continue the run interrupted" in lines["resume"]
    import ovmap.configs

    yamls = sorted(p.stem for p in (Path(ovmap.configs.__file__).parent / "dataset").glob("*.yaml"))
    assert f"choices: {', '.join(yamls)}" in lines["dataset"]
    entrypoint(["eval", "--help"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert "kNN votes per GT voxel" in lines["eval.k"]


def test_query_texts_may_contain_equals_signs():
    keys = {"map", "texts", "out_dir", "device", "region_margin", "softmax_temperature"}
    rest = split_positional_texts(["map=m.npz", "x=1 plane", "a chair", "out_dir=o", "--cfg", "job"], keys=keys)
    assert rest == ["map=m.npz", "out_dir=o", "--cfg", "job", "texts=['x=1 plane','a chair']"]
    # after "--" everything is a text, even a known key
    assert split_positional_texts(["map=m.npz", "--", "map=the old one"], keys=keys) == [
        "map=m.npz", "texts=['map=the old one']"]
    assert split_positional_texts(["it's"], keys=keys) == ["texts=['it\\'s']"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["map", "device=gpu"], "device must be auto, cpu, cuda or cuda:<n>; got 'gpu'"),
        (["map", "dataset=folder"], "the setting 'dataset.path' is required: add dataset.path=..."),
        (["query", "a chair"], "the setting 'map' is required: add map=..."),
        (["map", "mapping.voxel_size=0.1,0.2"], "'mapping.voxel_size=0.1,0.2' is a sweep: add -m"),
        (["eval", "-m", "hydra/launcher=submitit_locl", "dataset.seed=0,1"],
         "unknown hydra/launcher 'submitit_locl': did you mean 'submitit_local'"),
        (["map", "hydra/lancher=basic"], "unknown Hydra group 'hydra/lancher': did you mean 'hydra/launcher'"),
    ],
)
def test_other_bad_command_lines_are_one_line(capsys, tmp_path, args, expected):
    code, out, err = run_cli(capsys, *args, f"out_dir={tmp_path}")
    assert code == 2 and out == ""
    assert one_error_line(err).startswith(f"ovmap: error: {expected}")
