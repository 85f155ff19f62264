"""Real datasets in and out: every source shape (hub id from the datasets cache, save_to_disk, shard
folder, dataset folder with configs, glob, single file) and column shape (text and conversation
prompts; K responses + scores, chosen/rejected as conversations or text, TRL's implicit prompt)
through the prompt split and the offline first iteration of a tiny DAG; bad input as one clear line
with nothing written; the TRL export loaded back by datasets and trained on by TRL's DPOTrainer.

Nothing is downloaded. `cache_hub_dataset` (conftest) has datasets prepare a local dataset folder
and files the result in a temporary HF_DATASETS_CACHE under a hub id, in the layout `load_dataset`
leaves after a download; with HF_HUB_OFFLINE=1 (set by conftest and by every job) `load_dataset`
then finds it by that id, as it would a user's warm cache.
"""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest
from conftest import cache_hub_dataset, dataset_folder, snakemake, tiny_config, write_config

from nashflow.data import PromptsConfig, prompt_table, split_prompts
from nashflow.errors import DataError
from nashflow.io import read_provenance, read_table
from nashflow.offline import InitialDataConfig, load_initial

COMMIT = "5eed" + "ab" * 18


def conv(i: int) -> list[dict]:
    """A multi-turn prompt with a system turn, ending with the user's question."""
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": f"Name a colour ({i})."},
            {"role": "assistant", "content": "Blue."}, {"role": "user", "content": f"And another one? ({i})"}]


def turn(role: str, text: str) -> dict:
    return {"role": role, "content": text}


def uf_binarized(n: int, identical: tuple[int, ...] = ()) -> list[dict]:
    """HuggingFaceH4/ultrafeedback_binarized's shape: prompt text, chosen/rejected conversations, scores."""
    return [{"prompt": f"Question {i}?", "prompt_id": f"p{i}",
             "chosen": [turn("user", f"Question {i}?"), turn("assistant", f"A good answer {i}.")],
             "rejected": [turn("user", f"Question {i}?"),
                          turn("assistant", f"A good answer {i}." if i in identical else f"Meh {i}.")],
             "score_chosen": 8.0, "score_rejected": 3.0} for i in range(n)]


def mnpo_rows(n: int, k: int = 5) -> list[dict]:
    """princeton-nlp/gemma2-ultrafeedback-armorm's shape: K generated responses and their RM scores."""
    rows = [{"prompt": f"Offline prompt {i}", "all_generated_responses": [f"answer {i}.{j}" for j in range(k)],
             "all_rm_scores": [float((i + j) % k) for j in range(k)]} for i in range(n)]
    rows[0]["all_generated_responses"] = ["same"] * k  # all identical: skipped and counted
    return rows


def trl_implicit(n: int) -> list[dict]:
    """trl-lib/ultrafeedback_binarized's shape: chosen/rejected conversations, no prompt column."""
    return [{"chosen": conv(i) + [turn("assistant", f"Green ({i}).")],
             "rejected": conv(i) + [turn("assistant", "I don't know.")]} for i in range(n)]


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """A fresh datasets cache for this process and for the Snakemake jobs it starts."""
    import datasets

    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    return cache


@pytest.fixture()
def fake_model(tmp_path):
    d = tmp_path / "fake_model"  # the jobs run here never load it
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def save_to_disk(path, splits: dict[str, list[dict]]):
    import datasets

    datasets.DatasetDict({s: datasets.Dataset.from_list(rows) for s, rows in splits.items()}).save_to_disk(str(path))
    return path


def shard_folder(folder, rows: list[dict], n: int = 3, suffix: str = "parquet"):
    """Rows cut into n shards (Parquet or JSONL), as exported by other tools."""
    folder.mkdir(parents=True)
    for s in range(n):
        df = pd.DataFrame(rows[s::n])
        if suffix == "parquet":
            df.to_parquet(folder / f"part-{s:05d}.parquet")
        else:
            df.to_json(folder / f"part-{s:05d}.jsonl", orient="records", lines=True)
    return folder


# --- the DAG: prompt split and offline first iteration, one source shape each -------------------------


def run_first_iteration(tmp_path, fake_model, prompts: dict, initial: dict, shards: int = 1) -> dict:
    """Split the prompts and import iteration 1 from initial_data, up to its pairs and their TRL export:
    the jobs of the DAG that read datasets. Returns the run's results folder, tables and provenance."""
    cfg = tiny_config(fake_model, iterations=1, shards=shards, initial_data=initial)
    cfg["prompts"] = {"eval_size": 4, "prompts_per_iteration": 4, **prompts}
    write_config(tmp_path, cfg)
    snakemake(tmp_path, "--cores", "2", "results/tiny/prompts/pool.parquet", "results/tiny/iter1/pairs_trl.parquet")
    res = tmp_path / "results" / "tiny"
    return {"res": res, "eval": read_table(res / "prompts" / "eval.parquet"),
            "pool": read_table(res / "prompts" / "pool.parquet"),
            "split_source": read_provenance(res / "prompts" / "pool.parquet")["source"],
            "import_source": read_provenance(res / "iter1" / "samples" / "shard0.parquet")["source"]}


def load_parquet(files):
    """A table as datasets users read it (`files`: a path, a glob or a list)."""
    import datasets

    return datasets.load_dataset("parquet", data_files=files, split="train")


def check_outputs_load_with_datasets(res, n_prompts: int, k: int):
    """Samples, scores and pairs load with datasets as they are; the TRL export is TRL's format."""
    samples = load_parquet(str(res / "iter1" / "samples" / "shard*.parquet"))
    scores = load_parquet([str(f) for f in sorted((res / "iter1" / "scores").glob("shard*.parquet"))])
    assert samples.num_rows == scores.num_rows == n_prompts * k
    assert load_parquet(str(res / "iter1" / "pairs.parquet")).num_rows == n_prompts
    assert samples[0]["messages"][-1]["role"] == "user" and isinstance(scores[0]["reward"], float)
    trl = load_parquet(str(res / "iter1" / "pairs_trl.parquet"))
    assert trl.num_rows == n_prompts
    row = trl[0]
    assert row["prompt"][-1]["role"] == "user" and [m["role"] for m in row["chosen"]] == ["assistant"]
    assert row["score_chosen"] > row["score_rejected"] and row["chosen"] != row["rejected"]
    return samples, trl


def test_hub_prompts_and_save_to_disk_preferences(tmp_path, fake_model, hf_cache):
    """Prompts: a hub id from the cache, config and split named, conversation column (multi-turn, system
    turn), a slice of rows. Iteration 1: a save_to_disk DatasetDict in ultrafeedback_binarized's shape."""
    cache_hub_dataset(hf_cache, "trl-lib/ultrafeedback-prompt", {"train": [{"prompt": conv(i)} for i in range(30)],
                                                                 "test": [{"prompt": conv(i)} for i in range(3)]},
                      config="chat", commit=COMMIT)
    prefs = save_to_disk(tmp_path / "ufb", {"train_prefs": uf_binarized(9, identical=(4,)),
                                            "test_prefs": uf_binarized(2)})
    out = run_first_iteration(tmp_path, fake_model,
                              {"path": "trl-lib/ultrafeedback-prompt", "name": "chat", "split": "train",
                               "column": "prompt", "select": "5:25"},
                              {"path": str(prefs), "split": "train_prefs"}, shards=2)
    pool, src = out["pool"], out["split_source"]
    assert len(out["eval"]) + len(pool) == 20 and set(pool.source_row) | set(out["eval"].source_row) == set(range(5, 25))
    assert list(pool.messages[0])[0] == turn("system", "Answer briefly.") and len(pool.messages[0]) == 4
    assert pool.prompt[0].startswith("And another one?")
    assert src["kind"] == "hub" and src["commit"] == COMMIT and src["fingerprint"] and src["rows_in_split"] == 30
    assert src["name"] == "chat" and src["split"] == "train" and src["rows_used"] == 20
    imp = out["import_source"]
    assert imp["kind"] == "save_to_disk" and imp["shape"] == "pair" and imp["skipped_identical"] == 1
    samples, trl = check_outputs_load_with_datasets(out["res"], n_prompts=8, k=2)
    assert set(samples["generator"]) == {"offline:ufb"}
    assert trl[0]["prompt"] == [turn("user", trl[0]["prompt"][0]["content"])]


def test_shard_folder_prompts_and_hub_k_responses(tmp_path, fake_model, hf_cache):
    """Prompts: a folder of Parquet shards (text column, ids from a column), a seeded subsample.
    Iteration 1: a hub id from the cache with MNPO's all_generated_responses + all_rm_scores (K = 5)."""
    rows = [{"id": f"q{i}", "instruction": f"Write about topic {i}."} for i in range(40)]
    folder = shard_folder(tmp_path / "prompt_shards", rows)
    cache_hub_dataset(hf_cache, "princeton-nlp/gemma2-ultrafeedback-armorm", {"train": mnpo_rows(7)})
    out = run_first_iteration(tmp_path, fake_model,
                              {"path": str(folder), "column": "instruction", "id_column": "id", "sample": 12},
                              {"path": "princeton-nlp/gemma2-ultrafeedback-armorm", "split": "train"})
    src = out["split_source"]
    assert src["kind"] == "folder" and src["rows_used"] == 12 and src["sample"] == 12 and src["seed"] == 7
    both = pd.concat([out["eval"], out["pool"]])
    assert len(both) == 12 and set(both.prompt_id) <= {f"q{i}" for i in range(40)}
    imp = out["import_source"]
    assert imp["kind"] == "hub" and imp["columns"]["responses"] == "all_generated_responses"
    assert imp["skipped_identical"] == 1
    samples, _ = check_outputs_load_with_datasets(out["res"], n_prompts=6, k=5)
    assert set(samples["generator"]) == {"offline:princeton-nlp/gemma2-ultrafeedback-armorm"}


def test_glob_prompts_and_implicit_prompt_preferences(tmp_path, fake_model):
    """Prompts: a glob of JSONL shards. Iteration 1: a JSONL shard folder in TRL's implicit-prompt shape."""
    prompts = shard_folder(tmp_path / "jsonl", [{"prompt": f"Say something about {i}."} for i in range(10)], n=2,
                           suffix="jsonl")
    prefs = shard_folder(tmp_path / "trl_prefs", trl_implicit(5), n=2, suffix="jsonl")
    out = run_first_iteration(tmp_path, fake_model, {"path": str(prompts / "part-*.jsonl")}, {"path": str(prefs)})
    assert out["split_source"]["kind"] == "glob" and len(out["split_source"]["sha256"]) == 64
    assert out["import_source"]["columns"]["prompt"] is None  # the turns before the answer
    _, trl = check_outputs_load_with_datasets(out["res"], n_prompts=5, k=2)
    assert trl[0]["prompt"][0] == conv(0)[0] and len(trl[0]["prompt"]) == 4


# --- the library: the remaining shapes, select/sample, ids -----------------------------------------------


def test_dataset_folder_with_configs_and_single_files(tmp_path):
    folder = dataset_folder(tmp_path / "mini", {"train": [{"text": f"t {i}"} for i in range(6)],
                                               "test": [{"text": "x"}]}, config="small")
    df, rec = prompt_table(PromptsConfig(path=str(folder), name="small", column="text", select=4, eval_size=1))
    assert df.prompt.tolist() == [f"t {i}" for i in range(4)] and rec["kind"] == "folder" and rec["split"] == "train"
    for suffix in ("jsonl", "csv", "parquet"):
        f = tmp_path / f"p.{suffix}"
        rows = pd.DataFrame({"prompt": [f"t {i}" for i in range(4)]})
        getattr(rows, "to_json" if suffix == "jsonl" else f"to_{suffix}")(
            f, **({"orient": "records", "lines": True} if suffix == "jsonl" else {"index": False}))
        one, rec = prompt_table(PromptsConfig(path=str(f), eval_size=1))
        assert one.prompt_id.tolist() == df.prompt_id.tolist() and rec["kind"] == "file"


def test_same_prompt_same_id_as_text_or_one_turn_and_system_prompt():
    from nashflow.messages import conversation_id, prompt_conversation, prompt_id_for

    a = prompt_conversation("Hi there", "x", "Be kind.")
    b = prompt_conversation([turn("user", "Hi there")], "x", "Be kind.")
    assert a == b and a[0] == turn("system", "Be kind.")
    assert conversation_id(a, "Be kind.") == prompt_id_for("Hi there")  # as for a text prompt without a system prompt
    own = prompt_conversation(conv(1), "x", "Be kind.")  # keeps its own system turn
    assert own == conv(1) and conversation_id(own) != conversation_id(prompt_conversation(conv(2), "x"))


def test_sample_is_seeded_and_split_order_is_stable(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"prompt {i}"}) + "\n" for i in range(50)))
    one = prompt_table(PromptsConfig(path=str(f), sample=20, seed=3, eval_size=5))[0]
    two = prompt_table(PromptsConfig(path=str(f), sample=20, seed=3, eval_size=5))[0]
    other = prompt_table(PromptsConfig(path=str(f), sample=20, seed=4, eval_size=5))[0]
    assert one.source_row.tolist() == two.source_row.tolist() != other.source_row.tolist()
    assert one.source_row.is_monotonic_increasing and len(one) == 20
    eval_df, pool = split_prompts(one, PromptsConfig(path=str(f), eval_size=5, prompts_per_iteration=5))
    assert len(eval_df) == 5 and "source_row" in pool.columns


def test_duplicates_error_or_dropped_and_counted(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["a", "b", "a", "c", "b"]))
    with pytest.raises(DataError, match=r"p\.jsonl, row 3: duplicate prompt .*prompts\.drop_duplicates: true"):
        prompt_table(PromptsConfig(path=str(f), eval_size=1))
    df, rec = prompt_table(PromptsConfig(path=str(f), eval_size=1, drop_duplicates=True))
    assert df.prompt.tolist() == ["a", "b", "c"] and rec["duplicates_dropped"] == 2


def test_preference_shapes_text_and_configured_columns(tmp_path):
    f = tmp_path / "prefs.jsonl"
    rows = [{"question": f"q{i}", "good": f"yes {i}", "bad": f"no {i}" if i else f"yes {i}"} for i in range(4)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples, scores, rec = load_initial(InitialDataConfig(path=str(f), prompt_column="question",
                                                          chosen_column="good", rejected_column="bad"))
    assert rec["skipped_identical"] == 1 and len(samples) == 6 and scores.reward.tolist() == [1.0, 0.0] * 3
    assert samples.response.tolist()[:2] == ["yes 1", "no 1"]


# --- bad input: one line naming the key / source / row / column ------------------------------------------


@pytest.fixture(scope="module")
def bad_sources(tmp_path_factory):
    """Sources with something wrong for some config (built once; their own datasets cache)."""
    tmp_path = tmp_path_factory.mktemp("bad_sources")
    cache_hub_dataset(tmp_path / "hf_cache", "org/prompts", {"train": [{"prompt": conv(i)} for i in range(5)],
                                                "test": [{"prompt": conv(9)}]}, commit=COMMIT)
    bad_turn = [{"prompt": conv(0)}, {"prompt": conv(1)[:3]}]  # row 2 ends with the assistant
    dataset_folder(tmp_path / "ends_with_assistant", {"train": bad_turn})
    save_to_disk(tmp_path / "saved", {"train": uf_binarized(3)})
    return tmp_path


@pytest.mark.parametrize("section,keys,match", [
    ("prompts", {"path": "org/prompts", "split": "validation"},
     r"^prompts\.split 'validation' is not a split of dataset org/prompts; splits: train, test$"),
    ("prompts", {"path": "org/prompts", "name": "large"},
     r"^prompts\.name 'large' is not a config of dataset org/prompts; configs: default$"),
    ("prompts", {"path": "org/prompts", "column": "question"},
     r"^prompts dataset org/prompts \(split train\) has no column 'question' \(config key prompts\.column\); "
     r"columns found: prompt$"),
    ("prompts", {"path": "{tmp}/ends_with_assistant"},
     r"ends_with_assistant \(split train\), row 2, column 'prompt': the conversation ends with an assistant turn; "
     r"a prompt must end with a user turn$"),
    ("prompts", {"path": "org/prompts", "revision": "0123abc"},
     r"^prompts\.revision 0123abc: the datasets cache holds dataset org/prompts at commit 5eedab"),
    ("prompts", {"path": "org/prompts", "sample": 9}, r"prompts\.sample 9 is more than the 5 rows there are$"),
    ("prompts", {"path": "org/not-cached"},
     r"^prompts\.path: dataset org/not-cached is not a local file or folder and not in the Hugging Face datasets "
     r"cache \(HF_DATASETS_CACHE=.*HF_HUB_OFFLINE=1.*datasets\.load_dataset\('org/not-cached'\)"),
    ("initial_data", {"path": "{tmp}/saved", "split": "test"},
     r"^initial_data\.split 'test' is not a split of dataset .*saved; splits: train$"),
    ("initial_data", {"path": "{tmp}/saved", "chosen_column": "winner"},
     r"saved \(split train\) has no column 'winner' \(config key initial_data\.chosen_column\); "
     r"columns found: prompt, prompt_id, chosen, rejected, score_chosen, score_rejected$"),
    ("initial_data", {"path": "{tmp}/saved", "name": "x"},
     r"^initial_data\.name does not apply to a save_to_disk folder"),
], ids=["unknown-split", "unknown-config", "missing-column", "ends-with-assistant", "revision-not-cached",
        "sample-too-large", "not-in-cache", "initial-unknown-split", "initial-missing-column", "name-on-saved"])
def test_bad_source_is_one_clear_line(bad_sources, monkeypatch, section, keys, match):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(bad_sources / "hf_cache"))
    keys = {k: v.format(tmp=bad_sources) if isinstance(v, str) else v for k, v in keys.items()}
    with pytest.raises(DataError) as err:
        if section == "prompts":
            prompt_table(PromptsConfig(eval_size=1, **keys))
        else:
            load_initial(InitialDataConfig(**keys))
    msg = str(err.value)
    assert "\n" not in msg and re.search(match, msg), msg


def test_dataset_not_in_the_cache_stops_the_dag_before_any_job(tmp_path, fake_model):
    """Through Snakemake (the start-up check also reads initial_data now): one `nashflow: error:` line
    naming the key and how to fill the cache, and nothing written."""
    write_config(tmp_path, tiny_config(fake_model, initial_data={"path": "org/not-cached", "split": "train_prefs"}))
    proc = snakemake(tmp_path, "-n", check=False)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("nashflow: error:")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-2000:]
    assert re.search(r"initial_data\.path: dataset org/not-cached is not a local file or folder and not in the "
                     r"Hugging Face datasets cache .* datasets\.load_dataset\('org/not-cached'\)", lines[0]), lines[0]
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


# --- the TRL export: loaded back by datasets, processed and trained on by TRL ---------------------------


def test_trl_export_is_accepted_by_dpo_trainer_and_its_collator(tmp_path, tiny_model_dir):
    import datasets
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    from trl.data_utils import is_conversational
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from nashflow.export import export_trl_pairs
    from nashflow.io import write_table
    from nashflow.models import load_model
    from nashflow.pairs import build_pairs

    prefs = save_to_disk(tmp_path / "ufb", {"train": uf_binarized(6)})
    samples, scores, _ = load_initial(InitialDataConfig(path=str(prefs)), system_prompt="Be brief.")
    write_table(build_pairs(samples.drop(columns="position"), scores), tmp_path / "pairs.parquet")
    export_trl_pairs(str(tmp_path / "pairs.parquet"), str(tmp_path / "pairs_trl.parquet"))
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "pairs_trl.parquet"), split="train")
    assert ds.num_rows == 6 and is_conversational(ds[0])
    assert ds[0]["prompt"][0] == turn("system", "Be brief.") and ds[0]["chosen"][0]["role"] == "assistant"

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=2, max_steps=1, max_length=96,
                     report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
                     logging_steps=1)
    trainer = DPOTrainer(model=load_model(tiny_model_dir, eval_mode=False), args=args, train_dataset=ds,
                         processing_class=tok)
    processed = trainer.train_dataset
    assert processed.num_rows == 6 and all(len(x) > 0 for x in processed["chosen_ids"])
    batch = DataCollatorForPreference(pad_token_id=tok.pad_token_id)([processed[i] for i in range(3)])
    assert batch["input_ids"].shape[0] == 6 and batch["completion_mask"].sum() > 0
    result = trainer.train()
    assert result.global_step == 1 and math.isfinite(result.training_loss)
