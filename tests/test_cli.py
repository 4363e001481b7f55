"""The command line, run as a user runs it."""
from __future__ import annotations

import subprocess
import sys

import pytest

from autoloss import catalog
from autoloss.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "autoloss.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_zoo_list_groups_by_every_survey_section():
    out = run("zoo", "list")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for sec in catalog.default().sections:
        assert sec.title in text
        for sub in sec.subsections:
            assert sub.title in text
    for loss_id in catalog.ids():
        assert loss_id in text
    assert "(none yet)" in text  # sections the zoo does not fill yet are listed too
    assert text.index("Ground-truth label assignment") < text.index("Classification losses") \
        < text.index("Regression losses")


def test_zoo_show_prints_formula_latex_defaults_and_source(capsys):
    assert main(["zoo", "show", "focal"]) == 0
    text = capsys.readouterr().out
    for piece in ("Focal loss", "Lin, Goyal", "2.3", "(1 - pt) ** gamma", r"\gamma", "gamma",
                  "0.25", "def focal(", "def focal_vjp(", "logsigmoid"):
        assert piece in text, piece


def test_unknown_id_is_a_clear_error():
    out = run("zoo", "show", "gioux")
    assert out.returncode == 2
    assert "unknown zoo id 'gioux'; did you mean 'giou'" in out.stderr
    assert "Traceback" not in out.stderr


def test_console_script_is_installed():
    import shutil

    exe = shutil.which("autoloss") or str(__import__("pathlib").Path(sys.executable).with_name("autoloss"))
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "zoo" in out.stdout


@pytest.mark.parametrize("args", [[], ["zoo"], ["nope"]])
def test_usage_errors(args, capsys):
    with pytest.raises(SystemExit) as err:
        main(args)
    assert err.value.code == 2


def test_readme_zoo_table_is_generated_from_the_catalog():
    from pathlib import Path

    from autoloss.cli import markdown_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("<!-- zoo-table:start -->") + len("<!-- zoo-table:start -->")
    end = readme.index("<!-- zoo-table:end -->")
    assert readme[start:end].strip() == markdown_table().strip(), \
        "README zoo table is stale: regenerate it with `autoloss zoo table`"


def test_ci_runs_the_readme_test_command():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = root.joinpath("README.md").read_text()
    ci = root.joinpath(".ci/run").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv")]
    assert len(commands) == 2, "the quick start is exactly two commands"
    assert commands[1].replace(" install ", " install -q ") in ci
    # and the distributed tests, which the default run leaves out
    assert ".venv/bin/python -m pytest -q -m distributed" in readme
    assert ".venv/bin/python -m pytest -q -m distributed" in ci


def test_search_help_names_every_shipped_space(capsys):
    from autoloss.search import space as spaces

    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert len(spaces.names()) >= 7
    for name in spaces.names():  # read from search_spaces/, not a list kept by hand
        assert name.replace("-", "- ") in text or name in text, name
