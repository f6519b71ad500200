import re
import shutil
import subprocess

import numpy as np
import pytest
import xarray as xr

from sciinterp import plot
from sciinterp.report import build_report, strongest_links


def _links(n_feat=6, variables=("helix", "strand", "hydrophobicity")):
    score = np.zeros((n_feat, len(variables)))
    q = np.ones_like(score)
    score[2, 0], q[2, 0] = 0.81, 1e-5  # feature 2: helix
    score[4, 2], q[4, 2] = -0.55, 2e-3  # feature 4: anti-correlated with hydrophobicity
    score[1, 1], q[1, 1] = 0.30, 0.2  # not significant
    return xr.Dataset(
        {"score": (("feature", "variable"), score), "qvalue": (("feature", "variable"), q)},
        coords={"feature": np.arange(n_feat), "variable": list(variables),
                "variable_kind": ("variable", ["concept", "concept", "continuous"])},
        attrs={"hook": "layer3"},
    )


def _protein_features():
    rng = np.random.default_rng(0)
    proteins = np.repeat(["P1", "P2"], [30, 20])
    position = np.concatenate([np.arange(1, 31), np.arange(1, 21)])
    values = rng.exponential(1, (50, 2)).astype(np.float32)
    indices = np.stack([np.full(50, 2), rng.integers(0, 6, 50)], axis=1).astype(np.int32)
    return xr.Dataset(
        {"values": (("token", "k"), values), "indices": (("token", "k"), indices)},
        coords={"protein": ("token", proteins), "position": ("token", position),
                "residue": ("token", np.array(list("ACDEFGHIKLMNPQRSTVWY" * 3))[:50])},
    )


def _summary(n_feat=6):
    return xr.Dataset(
        {"frequency": ("feature", np.array([0.1, 0.0, 0.5, 0.01, 0.2, 0.05])[:n_feat]),
         "top_value": (("feature", "rank"), np.arange(n_feat * 3, dtype=float).reshape(n_feat, 3)),
         "top_protein": (("feature", "rank"), np.full((n_feat, 3), "P1"))},
        coords={"feature": np.arange(n_feat), "rank": np.arange(3)},
    )


def _describe(links, f, alpha):
    return f"feature {f} described"


def test_strongest_links_keeps_only_significant_sorted_by_abs_score():
    top = strongest_links(_links(), n=5)
    assert list(top["feature"]) == [2, 4]
    assert list(top["variable"]) == ["helix", "hydrophobicity"]
    assert top["score"].iloc[1] == pytest.approx(-0.55)


def test_feature_activations_densify_sparse_codes():
    feats = _protein_features()
    act = plot.feature_activations(feats, 2)
    expect = np.where(feats["indices"].values == 2, feats["values"].values, 0).sum(1)
    np.testing.assert_allclose(act.values, expect)
    assert act["protein"].values[0] == "P1"


def test_feature_map_composite_averages_tokens_per_cell():
    lat = np.repeat([-30.0, 30.0], 4)
    lon = np.tile([0.0, 90.0, 180.0, 270.0], 2)
    act = xr.DataArray(np.arange(8.0), dims="token", coords={"lat": ("token", lat), "lon": ("token", lon)})
    fig = plot.feature_map(xr.concat([act, act + 2], "token"))
    mesh = fig.axes[0].collections[0]
    assert mesh.get_array().reshape(2, 4)[1, 3] == pytest.approx(8.0)  # (7 + 9) / 2 at lat 30, lon 270
    with pytest.raises(ValueError, match="lat and lon"):
        plot.feature_map(xr.DataArray(np.zeros((2, 2)), dims=("y", "x")))


def test_residue_track_checks_lengths():
    with pytest.raises(ValueError, match="secondary structure has 3 letters, sequence 4"):
        plot.residue_track(np.ones(4), "ACDE", ss="HHH")


def test_report_has_overview_and_cards(tmp_path):
    path = build_report(tmp_path, _links(), _summary(), features=_protein_features(), discovery=[5],
                        secondary={"P1": "C" + "H" * 28 + "C"}, describe=_describe)
    text = path.read_text()
    cards = re.findall(r"<section class='card[^']*' id='feature-(\d+)'>", text)
    assert cards == ["2", "4", "5"]  # linked features by |score|, then the discovery queue
    assert "feature 2 described" in text and "no significant link" in text
    assert "2</b> significant links" in text
    assert text.count("data:image/png;base64,") >= 5


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(tmp_path):
    path = build_report(tmp_path, _links(), _summary(), features=_protein_features(), describe=_describe)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    js = ("<script>document.title='cards:'+document.querySelectorAll('section.card').length+"
          "';imgs:'+[...document.images].filter(i=>i.complete&&i.naturalWidth>0).length</script>")
    probe = tmp_path / "probe.html"
    probe.write_text(path.read_text().replace("</body>", js + "</body>"))
    dom = subprocess.run(["chromium", *flags, "--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    m = re.search(r"<title>cards:(\d+);imgs:(\d+)</title>", dom)
    assert m, dom[:500]
    assert int(m.group(1)) == 2
    assert int(m.group(2)) >= 4  # every embedded picture decoded by the browser
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", *flags, f"--screenshot={shot}", "--window-size=1100,1400", path.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000


def test_report_shows_the_saes_loss_recovered_from_eval_json(tmp_path):
    from sciinterp.report import evaluation_section, loss_recovered_of

    evaluation = {"masked_lm": {"loss_recovered": 0.7513, "ce_clean": 2.7853, "ce_zero": 2.9306, "n_masked": 114.0},
                  "sparsity": {"l0": 16.0}}  # an evaluator without a loss recovered
    assert loss_recovered_of(evaluation) == {"masked_lm": 0.7513}
    page = build_report(tmp_path, _links(), _summary(), describe=_describe, evaluation=evaluation).read_text()
    assert "Loss recovered (masked_lm): <b>0.751</b>" in page
    overview = page[page.index("<section id='overview'>"):page.index("</section>")]
    assert "eval.json" in overview and re.search(r"<th>ce_zero</th>\s*<td>2.931</td>", overview)
    assert re.search(r"<th>l0</th>\s*<td></td>\s*<td>16</td>", overview)
    assert "Loss recovered" not in evaluation_section({"sparsity": {"l0": 16.0}})
    assert "eval.json" not in build_report(tmp_path / "none", _links(), _summary(), describe=_describe).read_text()
