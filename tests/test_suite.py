"""Suite files: validation errors are one line naming the key; overrides and data roots apply as documented."""

from __future__ import annotations

from typing import Literal

import pytest
import yaml

from anombench.errors import UserError
from anombench.params import matches
from anombench import hookimpl
from anombench.suite import (Cell, apply_overrides, build_suite, check_reference_categories, expand, load_suite,
                             parse_override)


def base_doc() -> dict:
    return {
        "name": "t",
        "datasets": {"synthetic": {"params": {"image_size": 64}, "categories": ["disc"]}},
        "methods": {"pg": {"plugin": "pixel_gaussian", "params": {"min_std": 0.05}}},
        "metrics": ["image_auroc"],
        "table": {"cell": ["image_auroc"]},
    }


def error_of(doc: dict, registry) -> str:
    with pytest.raises(UserError) as info:
        build_suite(doc, "s.yaml", registry)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_suite_builds(registry):
    suite = build_suite(base_doc(), "s.yaml", registry)
    assert [m.name for m in suite.methods] == ["pg"]
    assert suite.metrics == {"image_auroc": {}}
    assert suite.seeds == [0]
    assert (suite.run.batch_size, suite.run.workers, suite.run.threads) == (None, None, None)  # the runner picks
    assert (suite.run.cell_timeout, suite.run.max_memory_gb, suite.run.ci, suite.run.ci_resamples) == (None, None, None, 1000)


def test_unknown_method_plugin_lists_registered(registry):
    doc = base_doc()
    doc["methods"]["pg"]["plugin"] = "padimm"
    message = error_of(doc, registry)
    assert message.startswith("s.yaml: methods.pg.plugin: unknown method 'padimm'; registered methods:")
    assert "pixel_gaussian" in message


def test_unknown_parameter_names_key_and_allowed(registry):
    doc = base_doc()
    doc["methods"]["pg"]["params"] = {"min_sdt": 0.1}
    message = error_of(doc, registry)
    assert message.startswith("s.yaml: methods.pg.params.min_sdt: unknown parameter")
    assert "allowed: min_std" in message
    assert "device" not in message.split("allowed:")[1]


def test_wrong_type_names_expected_type(registry):
    doc = base_doc()
    doc["datasets"]["synthetic"]["params"]["image_size"] = "big"
    assert "datasets.synthetic.params.image_size: expected int >= 32, got 'big'" in error_of(doc, registry)


def test_runner_supplied_parameter_is_refused(registry):
    doc = base_doc()
    doc["methods"]["pg"]["params"] = {"device": "cuda"}
    assert "set by the runner" in error_of(doc, registry)


@pytest.mark.parametrize("key,value,expected", [
    ("seeds", "zero", "seeds: expected a list of integers"),
    ("run", {"batch_sizes": 3}, "run.batch_sizes: unknown key; allowed: batch_size, workers, threads, cell_timeout"),
    ("run", {"batch_size": 0}, "run.batch_size: must be >= 1, got 0"),
    ("run", {"workers": 1.5}, "run.workers: expected int >= 0 | None, got 1.5"),
    ("run", {"cell_timeout": 0}, "run.cell_timeout: must be > 0, got 0"),
    ("run", {"max_memory_gb": -1}, "run.max_memory_gb: must be > 0, got -1"),
    ("run", {"ci": 95}, "run.ci: must be in (0, 1), got 95"),
    ("run", {"ci_resamples": 0}, "run.ci_resamples: must be >= 1, got 0"),
    ("run", [16], "run: expected a mapping"),
    ("table", {"cell": ["pro"]}, "table.cell: metric 'pro' is not in the suite's metrics"),
    ("table", {"rows": "seed"}, "table.rows: expected 'category' or 'method'"),
    ("table", {"aggregates": ["metals"]}, "unknown aggregate 'metals'"),
    ("metricz", [], "metricz: unknown key"),
])
def test_bad_values_are_named(registry, key, value, expected):
    doc = base_doc()
    doc[key] = value
    assert expected in error_of(doc, registry)


@pytest.mark.parametrize("section,plugin,params,expected", [
    ("methods", "padim", {"eps": 0}, "methods.x.params.eps: must be > 0, got 0"),
    ("methods", "padim", {"n_features": 0}, "methods.x.params.n_features: must be >= 1, got 0"),
    ("methods", "padim", {"reduction": "lda"},
     "methods.x.params.reduction: expected one of 'random', 'pca', 'none', got 'lda'"),
    ("methods", "padim_layer_ensemble", {"eps": -1}, "methods.x.params.eps: must be > 0, got -1"),
    ("methods", "spade", {"k": 0}, "methods.x.params.k: must be >= 1, got 0"),
    ("methods", "spade", {"sigma": 0}, "methods.x.params.sigma: must be > 0, got 0"),
    ("methods", "spade", {"index": "annoy"},
     "methods.x.params.index: expected one of 'flat', 'ivf', 'hnsw', got 'annoy'"),
    ("methods", "spade", {"nlist": 0}, "methods.x.params.nlist: must be >= 1, got 0"),
    ("methods", "spade", {"ef_search": 0}, "methods.x.params.ef_search: must be >= 1, got 0"),
    ("methods", "vae", {"decoder_channels": [8, 8]},
     "methods.x.params.decoder_channels: must have exactly 5 items, got 2"),
    ("methods", "vae", {"decoder_channels": [8, 8, 8, 0, 8]},
     "methods.x.params.decoder_channels: item 3: must be >= 1, got 0"),
    ("methods", "vae", {"crop": 250},
     "methods.x.params.crop: must be a multiple of 32 (the encoder's stride), got 250"),
    ("methods", "vae", {"epochs": 0}, "methods.x.params.epochs: must be >= 1, got 0"),
    ("methods", "vae", {"lr": 0}, "methods.x.params.lr: must be > 0, got 0"),
    ("methods", "vae", {"kl_weight": -1}, "methods.x.params.kl_weight: must be >= 0, got -1"),
    ("datasets", "synthetic", {"image_size": 16}, "datasets.x.params.image_size: must be >= 32, got 16"),
    ("datasets", "rd_mvtec", {"max_degrees": 181}, "datasets.x.params.max_degrees: must be in [0, 180], got 181"),
    ("datasets", "stc", {"frame_stride": 0}, "datasets.x.params.frame_stride: must be >= 1, got 0"),
    ("datasets", "folder", {"root": "r", "normal_split_ratio": 1},
     "datasets.x.params.normal_split_ratio: must be in [0, 1), got 1"),
    ("metrics", "pro", {"max_fpr": 0}, "metrics.pro.max_fpr: must be in (0, 1], got 0"),
    ("metrics", "pixel_auroc", {"pixel_budget": -1}, "metrics.pixel_auroc.pixel_budget: must be >= 0, got -1"),
])
def test_the_built_in_plugins_ranges_are_checked_when_the_suite_loads(registry, section, plugin, params, expected):
    """Each built-in's single-parameter rules are markers in its signature: a bad value stops the suite at load."""
    doc = base_doc()
    if section == "metrics":
        doc["metrics"] = {"image_auroc": {}, plugin: params}
    else:
        doc[section] = {"x": {"plugin": plugin, "params": params}}
    assert error_of(doc, registry) == f"s.yaml: {expected}"


def test_missing_required_key(registry):
    doc = base_doc()
    del doc["methods"]
    assert error_of(doc, registry) == "s.yaml: missing key 'methods'"


def test_load_suite_reports_yaml_syntax_with_line(tmp_path, registry):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ndatasets: [unclosed\n")
    with pytest.raises(UserError, match=r"broken.yaml: not valid YAML at line \d+"):
        load_suite(path, registry)
    with pytest.raises(UserError, match="suite file not found"):
        load_suite(tmp_path / "nope.yaml", registry)


def test_overrides_shorthands_and_dotted_paths(tmp_path, registry):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(base_doc()))
    suite = load_suite(path, registry, ["categories=[stripes, plate]", "batch_size=4", "image_size=48",
                                        "methods.pg.params.min_std=0.2", "seeds=[1, 2]"])
    assert suite.datasets[0].categories == ["stripes", "plate"]
    assert suite.datasets[0].params["image_size"] == 48
    assert suite.run.batch_size == 4 and suite.seeds == [1, 2]
    assert suite.methods[0].params["min_std"] == 0.2


def test_datasets_and_methods_shorthands_keep_the_listed_entries():
    """Table VIII without STC on disk: --set datasets=[mvtec] keeps the suite's MVTec AD part alone."""
    doc = {"datasets": {"mvtec": {}, "stc": {}}, "methods": {"a": {}, "b": {}, "c": {}}}
    out = apply_overrides(doc, [("datasets", ["mvtec"]), ("methods", ["c", "a"])], {})
    assert list(out["datasets"]) == ["mvtec"] and list(out["methods"]) == ["a", "c"]  # the suite's order
    with pytest.raises(UserError, match=r"^--set methods: no method 'z' in the suite; its methods: a, b, c$"):
        apply_overrides(doc, [("methods", ["z"])], {})


@pytest.mark.parametrize("text,expected", [
    ("categories=bottle", ["bottle"]), ("categories=bottle,cable", ["bottle", "cable"]),
    ("categories=[bottle, cable]", ["bottle", "cable"]), ("categories=001", ["001"]),
])
def test_list_shorthands_need_no_brackets(text, expected):
    out = apply_overrides({"datasets": {"mvtec": {}}}, [parse_override(text)], {})
    assert out["datasets"]["mvtec"]["categories"] == expected


def test_methods_and_seeds_shorthands_read_comma_lists():
    doc = {"methods": {"spade": {}, "padim-r18-rd100": {}, "vae": {}}}
    out = apply_overrides(doc, [parse_override("methods=spade,padim-r18-rd100"), parse_override("seeds=0,1")], {})
    assert list(out["methods"]) == ["spade", "padim-r18-rd100"] and out["seeds"] == [0, 1]
    assert apply_overrides(doc, [parse_override("seeds=3")], {})["seeds"] == [3]
    with pytest.raises(UserError, match="^--set methods: no method 'padim' in the suite; its methods: spade, "
                                        "padim-r18-rd100, vae$"):
        apply_overrides(doc, [parse_override("methods=spade,padim")], {})


def test_run_shorthands_reach_the_run_block(tmp_path, registry):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(base_doc()))
    suite = load_suite(path, registry, ["threads=2", "cell_timeout=20", "max_memory_gb=3", "ci=0.95",
                                        "ci_resamples=200", "workers=0"])
    assert (suite.run.threads, suite.run.cell_timeout, suite.run.max_memory_gb, suite.run.ci, suite.run.ci_resamples, suite.run.workers) \
        == (2, 20, 3, 0.95, 200, 0)
    assert suite.path == str(path)
    with pytest.raises(UserError, match=r"s.yaml with --set threads=2 ci=2: run.ci: must be in \(0, 1\), got 2$"):
        load_suite(path, registry, ["threads=2", "ci=2"])  # the bad value is named as the --set's, not the file's


def test_overrides_reach_entries_written_without_a_value():
    """`padim:` with no value is an entry with defaults; overrides and --data must edit it, not crash on None."""
    doc = {"datasets": {"synthetic": None}, "methods": {"pg": None}}
    out = apply_overrides(doc, [("categories", ["disc"]), ("methods.pg.params.min_std", 0.2)], {"synthetic": "/d"})
    assert out["datasets"]["synthetic"] == {"categories": ["disc"], "params": {"root": "/d"}}
    assert out["methods"]["pg"] == {"params": {"min_std": 0.2}}


def test_override_errors(registry):
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        parse_override("categories")
    with pytest.raises(UserError, match=r"^--set colour: unknown key \(a method's parameter is methods.NAME.params.colour, "
                                        r"NAME one of: pg\); shorthands: categories, image_size, backbone, "):
        apply_overrides(base_doc(), [("colour", 1)], {})
    with pytest.raises(UserError, match=r"^--set catgories: unknown key \(did you mean categories\?\)"):
        apply_overrides(base_doc(), [("catgories", "disc")], {})


def test_data_roots_set_root_of_matching_plugin():
    doc = {"datasets": {"mv": {"plugin": "mvtec"}, "synthetic": {}}}
    out = apply_overrides(doc, [], {"mvtec": "/data/mvtec"})
    assert out["datasets"]["mv"]["params"]["root"] == "/data/mvtec"
    assert "params" not in out["datasets"]["synthetic"]


def test_expand_orders_cells_sharing_data_together(registry):
    doc = base_doc()
    doc["methods"]["pg2"] = {"plugin": "pixel_gaussian"}
    doc["seeds"] = [0, 1]
    suite = build_suite(doc, "s.yaml", registry)
    cells = expand(suite, {"synthetic": ["disc", "plate"]})
    assert cells[:2] == [Cell("pg", "synthetic", "disc", 0), Cell("pg2", "synthetic", "disc", 0)]
    assert len(cells) == 8 and cells[-1].id == "pg2|synthetic|plate|1"


@pytest.mark.parametrize("value,annotation,ok", [
    (3, int, True), (True, int, False), (3, float, True), ("a", float, False),
    ([1, 2], list[int], True), ([1, "x"], list[int], False), (None, int | None, True), ("x", int | None, False),
    ("pca", Literal["pca", "random"], True), ("svd", Literal["pca", "random"], False),
])
def test_type_matching(value, annotation, ok):
    assert matches(value, annotation) is ok


def test_backbone_shorthand_reaches_only_methods_with_a_backbone(tmp_path, registry):
    doc = base_doc()
    doc["methods"]["padim"] = {"plugin": "padim", "params": {"weights": "none"}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    suite = load_suite(path, registry, ["backbone=efficientnet_lite0"])
    params = {m.name: m.params for m in suite.methods}
    assert params["padim"]["backbone"] == "efficientnet_lite0" and "backbone" not in params["pg"]


def with_reference(reference: dict) -> dict:
    doc = base_doc()
    doc["metrics"] = ["pixel_auroc", "pro"]
    doc["table"] = {"cell": ["pixel_auroc", "pro"], "aggregates": ["all"]}
    doc["reference"] = reference
    return doc


def test_a_valid_reference_block_is_kept(registry):
    reference = {"source": "Defard et al.", "values": {"pg": {"disc": [98.1, None], "all": [97.0, 91.0]}},
                 "only": {"AE-SSIM": {"disc": [93.0, 83.4]}}}
    assert build_suite(with_reference(reference), "s.yaml", registry).reference == reference


@pytest.mark.parametrize("reference,expected", [
    ({"value": {}}, "s.yaml: reference.value: unknown key; allowed: source, values, only"),
    ({"values": {"pgg": {"all": [1, 2]}}}, "s.yaml: reference.values.pgg: no method 'pgg' in the suite; its "
                                           "methods: pg (put methods the paper quotes"),
    ({"values": {"pg": {"all": 97.0}}}, "s.yaml: reference.values.pg.all: expected a list of 2 figures"),
    ({"values": {"pg": {"all": [1, 2, 3]}}}, "reference.values.pg.all: expected a list of 2 figures"),
    ({"only": {"X": {"all": ["high", 2]}}}, "reference.only.X.all: figures must be numbers or null, got 'high'"),
    ({"values": {"pg": {"textures": [1, 2]}}}, "reference.values.pg.textures: aggregate 'textures' is not in "
                                               "table.aggregates (all)"),
    ({"values": {"pg": {"mvtec:all": [1, 2]}}}, "reference.values.pg.mvtec:all: no dataset 'mvtec' in the suite"),
    ({"values": ["pg"]}, "s.yaml: reference.values: expected a mapping"),
])
def test_reference_mistakes_are_one_line_naming_the_key(registry, reference, expected):
    assert expected in error_of(with_reference(reference), registry)


def test_reference_categories_are_checked_against_the_datasets(registry):
    reference = {"values": {"pg": {"disc": [1, 2], "all": [1, 2]}}, "only": {"X": {"dsic": [1, 2]}}}
    suite = build_suite(with_reference(reference), "s.yaml", registry)
    with pytest.raises(UserError, match=r"^s.yaml: reference.only.X.dsic: no category 'dsic' in synthetic; its "
                                        r"categories: disc, stripes$"):
        check_reference_categories(suite, {"synthetic": ["stripes", "disc"]})
    check_reference_categories(suite, {"synthetic": ["stripes", "disc", "dsic"]})


def test_dataset_and_method_entries_are_both_named_by_name(registry):
    suite = build_suite(base_doc(), "s.yaml", registry)
    assert suite.datasets[0].name == "synthetic" and suite.methods[0].name == "pg"


def test_a_plugin_class_without_init_takes_no_parameters(register_plugin):
    class Plain:
        def update(self, scores, batch): ...
        def compute(self, resources): return 0.0

    class Plugin:
        @hookimpl
        def anombench_register_metrics(self, register):
            register("plain", Plain)

    registry = register_plugin(Plugin())
    doc = base_doc()
    doc["metrics"] = {"plain": {"bins": 3}}
    doc["table"] = {"cell": ["plain"]}
    assert error_of(doc, registry) == "s.yaml: metrics.plain.bins: unknown parameter; allowed: none"
    doc["metrics"] = {"plain": {}}
    assert build_suite(doc, "s.yaml", registry).metrics == {"plain": {}}


def test_the_suite_hash_covers_what_is_measured_not_how_it_is_run_or_shown(registry):
    doc = base_doc()
    reference = build_suite(doc, "s.yaml", registry).sha256()
    cosmetic = doc | {"description": "another text", "run": {"workers": 0, "threads": 1},
                      "table": {"cell": ["image_auroc"], "title": "another title"}}
    assert build_suite(cosmetic, "s.yaml", registry).sha256() == reference
    assert build_suite(doc | {"seeds": [0, 1]}, "s.yaml", registry).sha256() != reference
    other = yaml.safe_load(yaml.safe_dump(doc))
    other["datasets"]["synthetic"]["categories"] = ["plate"]
    assert build_suite(other, "s.yaml", registry).sha256() != reference
