"""``harness doctor`` reports where weights are looked for, and notices them when they appear."""

from harness.doctor import checks


def test_doctor_finds_musiq_weights_in_the_pyiqa_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    rows = {item: (status, detail) for item, status, detail in checks()}
    status, detail = rows["MUSIQ (koniq10k)"]
    assert status == "absent" and str(tmp_path / "hub" / "pyiqa") in detail and "metrics.musiq.weights" in detail
    weights = tmp_path / "hub" / "pyiqa" / detail.split("/")[-1].split(" ")[0]
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"x")
    assert dict((i, s) for i, s, _ in checks())["MUSIQ (koniq10k)"] == "present"
    assert "guide.pretrained" in rows["CLIP ViT-B-32/openai"][1]
