"""The documentation: the generated configuration reference is current and complete, the
MkDocs site builds with --strict (every page in the navigation, every link and anchor
resolves), and README.md's links point at files that exist."""

import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autorlhf_nemo import docs
from autorlhf_nemo.config import schema, validate

REPO = Path(__file__).resolve().parents[1]


def _schemas() -> list[type]:
    """Every dataclass of the schema module that a config is made of."""
    return [obj for obj in vars(schema).values()
            if dataclasses.is_dataclass(obj) and obj.__module__ == schema.__name__]


def test_reference_is_current():
    """docs/reference/config.md is what the schema generates now (a changed default, range or
    description must be regenerated: python -m autorlhf_nemo.docs)."""
    assert docs.REFERENCE.read_text() == docs.config_reference(), \
        "docs/reference/config.md is stale: run python -m autorlhf_nemo.docs"


def test_every_field_of_every_schema_has_a_description():
    schemas = _schemas()
    assert {s.__name__ for s in schemas} >= {"RootConfig", "ModelConfig", "SamplingConfig", "ILQLConfig",
                                             "ClusterConfig"}
    for s in schemas:
        descriptions = docs.field_descriptions(s)
        assert set(descriptions) == {f.name for f in dataclasses.fields(s)}
        assert all(len(d) > 5 for d in descriptions.values()), s


def test_a_field_without_description_is_named():
    @dataclasses.dataclass
    class Partly:
        described: int = 1
        """Has one."""
        bare: int = 2

    with pytest.raises(docs.MissingDescription, match=r"Partly has fields without a description: bare;"):
        docs.field_descriptions(Partly)


def test_subclass_inherits_a_description_it_does_not_restate():
    descriptions = docs.field_descriptions(schema.PPOConfig)
    assert descriptions["epochs"] == docs.field_descriptions(schema.AlgorithmConfig)["epochs"]
    assert descriptions["clip_value"].startswith("Value loss")


def test_every_validation_rule_appears_in_the_reference():
    """Each range and choice list of validation's own tables shows on its field's row (a rule
    for a field that no longer exists, or renamed, would not)."""
    text = docs.config_reference()
    rows = {line.split("|")[1].strip(" `"): line for line in text.splitlines() if line.startswith("| `")}
    shared = {f"algorithm.{k}": r for k, r in {**validate.ALGORITHM_RANGES, **validate.ALGORITHM_CHOICES}.items()}
    for name, rule in {**validate.RANGES, **validate.CHOICES, **shared}.items():
        assert name in rows, f"{name} has a validation rule but no row in the reference"
        assert str(rule).replace("|", "\\|") in rows[name].replace("&lt;", "<"), (name, rows[name])
    own = {a: {**validate.ALGORITHM_OWN_RANGES.get(a, {}), **validate.ALGORITHM_OWN_CHOICES.get(a, {})}
           for a in {*validate.ALGORITHM_OWN_RANGES, *validate.ALGORITHM_OWN_CHOICES}}
    for algorithm, rules in own.items():
        section = text.split(f"### algorithm={algorithm}\n")[1].split("\n## ")[0].split("\n### ")[0]
        for key, rule in rules.items():
            assert f"| `algorithm.{key}` |" in section and str(rule) in section, (algorithm, key)
    assert rows["train.min_lr"].count("in [0, train.lr]") == 1
    assert validate.field_rule("train.min_lr").holds(0.5) and not validate.field_rule("train.lr").holds(0)


def test_check_flags_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "config.md"
    stale.write_text(docs.config_reference().replace("Peak learning rate.", "Old text."))
    assert docs.main(["--check", "--output", str(stale)]) == 1
    assert "is stale: run python -m autorlhf_nemo.docs" in capsys.readouterr().err
    out = subprocess.run([sys.executable, "-m", "autorlhf_nemo.docs", "--output", str(stale)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert docs.main(["--check", "--output", str(stale)]) == 0


def test_outside_a_source_checkout_the_output_must_be_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(docs, "SOURCE_TREE", tmp_path)
    assert docs.main([]) == 2
    assert "not a source checkout" in capsys.readouterr().err and not list(tmp_path.iterdir())


def _mkdocs_build(root: Path, site: Path) -> subprocess.CompletedProcess:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.fail("mkdocs is not installed: pip install -e '.[docs]' (make install does)")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_mkdocs_site_builds_strict(tmp_path):
    out = _mkdocs_build(REPO, tmp_path / "site")
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "site" / "reference" / "config" / "index.html").exists()
    assert (tmp_path / "site" / "algorithms" / "index.html").exists()


@pytest.mark.parametrize("fault,expected", [
    ("orphan", 'not included in the "nav" configuration'),
    ("anchor", "no-such-heading"),
])
def test_mkdocs_strict_fails_on_a_page_left_out_of_the_nav_or_a_broken_anchor(tmp_path, fault, expected):
    """The guard above can fail: the same site with a page missing from the navigation, or with a
    link to a heading that does not exist, does not build."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "docs", copy / "docs")
    shutil.copy(REPO / "mkdocs.yml", copy / "mkdocs.yml")
    if fault == "orphan":
        (copy / "docs" / "orphan.md").write_text("# Orphan\n\nSee [the algorithms](algorithms.md).\n")
    else:
        with open(copy / "docs" / "index.md", "a") as index:
            index.write("\nSee [PPO](algorithms.md#no-such-heading).\n")
    out = _mkdocs_build(copy, tmp_path / "site")
    log = out.stdout + out.stderr
    assert out.returncode != 0 and expected in log, log


def _anchors(page: Path) -> set[str]:
    """The heading ids MkDocs gives a page (Python-Markdown's toc slugify of the heading's text)."""
    from markdown.extensions.toc import slugify

    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)   # no headings inside code blocks
    return {slugify(h.replace("`", ""), "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_readme_links_resolve():
    """README.md's relative links point at files of the repository (the docs pages included) and,
    with an anchor, at a heading of that page; the front door stays short."""
    text = (REPO / "README.md").read_text()
    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]
    assert any(t.startswith("docs/") for t in targets), "README.md links no docs page"
    missing = [t for t in targets if not (REPO / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
    anchored = [t.split("#") for t in targets if "#" in t]
    assert anchored, "README.md links no heading (the anchor check would check nothing)"
    broken = [f"{page}#{anchor}" for page, anchor in anchored if anchor not in _anchors(REPO / page)]
    assert not broken, f"README.md links to headings that do not exist: {broken}"
    assert "running-on-a-gpu-the-smoke-script" in _anchors(REPO / "docs" / "testing.md")
    assert len(text.splitlines()) <= 300
