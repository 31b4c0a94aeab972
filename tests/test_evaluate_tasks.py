"""Task files -> requests: each named task's prompts equal lm-evaluation-harness's own, the
generic forms, the published variants, and a one-line error for every malformed input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lit_gpt_scratch.errors import UserError
from lit_gpt_scratch.evaluate.tasks import NAMED, hellaswag_text, load_task, load_tasks

TASKS = Path(__file__).parent / "data" / "tasks"


def write_lines(path: Path, *records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_hellaswag_cleans_wikihow_markers_as_the_harness_does():
    text = "Home and Garden: [header] How to water a plant [title] Check the soil. [step] push"
    assert hellaswag_text(text) == "Home and Garden: How to water a plant. Check the soil. push"
    task = load_task("hellaswag", str(TASKS / "hellaswag.jsonl"))
    first = task.items[0]
    assert first.requests[0] == (
        "Making tea: A man fills a kettle with water and sets it on the stove. He",
        " waits for the water to boil and pours it over a tea bag.",
    )
    assert first.answer == 0 and len(first.requests) == 4
    assert first.lengths[0] == len("waits for the water to boil and pours it over a tea bag.")
    assert task.items[1].answer == 1  # a label written as the string "1"


def test_winogrande_scores_the_rest_of_the_sentence_after_each_filled_blank():
    item = load_task("winogrande", str(TASKS / "winogrande.jsonl")).items[1]
    assert item.requests == (
        ("Anna lent Maria her umbrella because Anna", " was going out in the rain."),
        ("Anna lent Maria her umbrella because Maria", " was going out in the rain."),
    )
    assert item.answer == 1


def test_lambada_predicts_the_last_word_and_reports_accuracy_and_perplexity():
    task = load_task("lambada", str(TASKS / "lambada.jsonl"))
    context, continuation = task.items[0].requests[0]
    assert continuation == " box" and context.endswith("folding it back into the")
    assert task.metrics == ("acc", "ppl") and task.kind == "cloze"


def test_arc_reads_ai2s_own_files_and_the_hugging_face_rows_alike(tmp_path):
    ai2 = {"id": "q", "answerKey": "B", "question": {"stem": "Pick B.", "choices": [
        {"text": "first", "label": "A"}, {"text": "second", "label": "B"}]}}  # fmt: skip
    hf = {"id": "q", "answerKey": "B", "question": "Pick B.",
          "choices": {"text": ["first", "second"], "label": ["A", "B"]}}  # fmt: skip
    a = load_task("arc_easy", str(write_lines(tmp_path / "a.jsonl", ai2))).items[0]
    b = load_task("arc_easy", str(write_lines(tmp_path / "b.jsonl", hf))).items[0]
    assert (
        a.requests
        == b.requests
        == (
            ("Question: Pick B.\nAnswer:", " first"),
            ("Question: Pick B.\nAnswer:", " second"),
        )
    )
    assert a.answer == b.answer == 1


def test_piqa_reads_its_answers_from_the_labels_file_beside_the_questions():
    task = load_task("piqa", str(TASKS / "piqa.jsonl"))
    assert [item.answer for item in task.items] == [0, 1, 0]
    assert task.items[0].requests[0][0] == "Question: To keep bread fresh for longer,\nAnswer:"


def test_the_generic_forms_are_known_by_their_keys():
    choice = load_task("mine", str(TASKS / "python_choice.jsonl"))
    cloze = load_task("mine2", str(TASKS / "python_cloze.jsonl"))
    assert choice.kind == "choice" and choice.metrics == ("acc", "acc_norm")
    assert choice.items[0].requests[1] == ("def square(x):\n    return x", " / 0")
    assert cloze.kind == "cloze" and cloze.items[1].requests[0][1] == " x"


def test_tasks_resolve_from_the_task_dir_or_their_own_file_and_limit_counts_items(tmp_path):
    mine = write_lines(tmp_path / "q.jsonl", {"context": "a", "choices": ["b", "c"], "answer": 1})
    tasks = load_tasks(f"hellaswag,python_cloze,own={mine}", str(TASKS), limit=2)
    assert [t.name for t in tasks] == ["hellaswag", "python_cloze", "own"]
    assert [len(t.items) for t in tasks] == [2, 2, 1]
    assert load_tasks(["own=" + str(mine)], None, None)[0].items[0].answer == 1


def error_of(call) -> str:
    with pytest.raises(UserError) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message
    return message


CHOICES = '"context": "a", "choices": '


@pytest.mark.parametrize(
    "line, expected",
    [
        ("{not json", r"task t: t.jsonl line 2 is not JSON"),
        ("[1, 2]", r"task t: t.jsonl line 2 is not a JSON object"),
        (
            "{" + CHOICES + '["b"], "answer": 0}',
            r"line 2 has 1 choice\(s\); a question needs at least 2",
        ),
        ("{" + CHOICES + '["b", "c"], "answer": 2}', r"line 2 answer 2 is not an index of its 2"),
        ("{" + CHOICES + '["b", "c"], "answer": true}', r"line 2 field 'answer' is bool, not int"),
        ("{" + CHOICES + '"bc", "answer": 0}', r"line 2 field 'choices' is str, not list"),
        ('{"choices": ["b", "c"], "answer": 0}', r"line 2 has no field 'context'"),
    ],
)
def test_a_malformed_line_is_named_by_its_number(tmp_path, line, expected):
    good = {"context": "a", "choices": ["b", "c"], "answer": 0}
    path = write_lines(tmp_path / "t.jsonl", good, line)
    assert re.search(expected, error_of(lambda: load_task("t", str(path))))


HELLASWAG = {"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "endings": ["d", "e"], "label": 0}
WINOGRANDE = {"sentence": "a _ b", "option1": "a", "option2": "b", "answer": "1"}
ARC = {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "A"}


@pytest.mark.parametrize(
    "name, record, expected",
    [
        ("hellaswag", {**HELLASWAG, "label": "x"}, "field 'label' is 'x', not an index"),
        ("hellaswag", {**HELLASWAG, "endings": ["d"]}, "has 1 choice"),
        ("winogrande", {**WINOGRANDE, "sentence": "no blank"}, "has no blank '_'"),
        ("winogrande", {**WINOGRANDE, "answer": "3"}, "'answer' is '3', not '1' or '2'"),
        ("arc_easy", {**ARC, "answerKey": "E"}, "answerKey 'E' is not one of the labels"),
        ("lambada", {"text": "oneword"}, "fewer than 2 words"),
        ("piqa", {"goal": "g", "sol1": "a", "sol2": "b"}, "has no field 'label'"),
    ],
)
def test_each_named_format_names_what_its_line_lacks(tmp_path, name, record, expected):
    path = write_lines(tmp_path / f"{name}.jsonl", record)
    message = error_of(lambda: load_task(name, str(path)))
    assert message.startswith(f"task {name}: {name}.jsonl line 1 ") and expected in message


def test_an_unknown_task_a_missing_file_and_an_empty_one_are_one_line_errors(tmp_path):
    unknown = error_of(lambda: load_tasks("hellaswg", str(TASKS), None))
    assert unknown.startswith("unknown task 'hellaswg': the named tasks are hellaswag, ")
    missing = error_of(lambda: load_tasks("piqa", str(tmp_path), None))
    assert missing == (
        f"task piqa: {tmp_path}/piqa.jsonl does not exist (the published file: "
        f"{NAMED['piqa'].files})"
    )
    assert "give --task_dir DIR" in error_of(lambda: load_tasks("lambada", None, None))
    empty = write_lines(tmp_path / "e.jsonl", "")
    assert error_of(lambda: load_task("e", str(empty))) == f"task e: {empty} holds no items"
    neither = write_lines(tmp_path / "n.jsonl", {"question": "q"})
    assert "n.jsonl line 1 is neither generic form" in error_of(
        lambda: load_task("n", str(neither))
    )
    assert "names hellaswag twice" in error_of(
        lambda: load_tasks("hellaswag,hellaswag", str(TASKS), None)
    )


def test_a_task_reads_from_a_hugging_face_dataset_spec_offline(tmp_path):
    """``hf:`` sources go through datasets.load_dataset: here its json builder on a local file,
    which is how the published datasets are read on a machine with a network."""
    pytest.importorskip("datasets")
    source = f"hf:json?data_files={TASKS / 'hellaswag.jsonl'}&split=train"
    from_hf = load_task("hellaswag", source)
    from_file = load_task("hellaswag", str(TASKS / "hellaswag.jsonl"))
    assert [i.requests for i in from_hf.items] == [i.requests for i in from_file.items]
    assert from_hf.items[0].where == "json record 0"


# --- the harness's own task definitions, reading the same files ----------------------------

HARNESS_TASKS = {  # name -> (the harness's YAML, the split it reads)
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation"),
    "arc_challenge": ("arc/arc_challenge.yaml", "test"),
    "winogrande": ("winogrande/default.yaml", "validation"),
    "lambada": ("lambada/lambada_openai.yaml", "test"),
    "piqa": ("piqa/piqa.yaml", "validation"),
}


def task_file(name: str, folder: Path) -> Path:
    """The project's test file of a task, as the harness reads it (PIQA's answers as a field,
    as in the Hugging Face rows)."""
    data = TASKS / f"{name}.jsonl"
    if name != "piqa":
        return data
    labels = (TASKS / "piqa-labels.lst").read_text().split()
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows = [{**row, "label": int(label)} for row, label in zip(rows, labels, strict=True)]
    return write_lines(folder / "piqa_rows.jsonl", *rows)


@pytest.fixture(scope="module")
def harness_requests(tmp_path_factory) -> dict[str, list[tuple[str, str]]]:
    """The (context, continuation) requests lm-evaluation-harness builds for each of its
    tasks when it reads the project's test file instead of the Hugging Face dataset."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    harness_tasks = Path(lm_eval.__file__).parent / "tasks"
    folder = tmp_path_factory.mktemp("harness")
    for name, (yaml_file, split) in HARNESS_TASKS.items():
        (folder / f"{name}.yaml").write_text(
            f"include: {harness_tasks / yaml_file}\n"
            f"task: local_{name}\n"
            "dataset_path: json\n"
            "dataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    {split}: {task_file(name, folder)}\n"
            "training_split: null\n"
            "fewshot_split: null\n" + ("validation_split: null\n" if split == "test" else "")
        )
    loaded = TaskManager(include_path=str(folder)).load([f"local_{n}" for n in HARNESS_TASKS])
    requests = {}
    for name in HARNESS_TASKS:
        task = loaded["tasks"][f"local_{name}"]
        task.build_all_requests(limit=None, rank=0, world_size=1)
        requests[name] = [tuple(instance.args) for instance in task.instances]
    return requests


@pytest.mark.parametrize("name", HARNESS_TASKS)
def test_prompts_equal_the_harnesss_own_for_the_same_file(harness_requests, tmp_path, name):
    data = task_file(name, tmp_path)
    ours = [r for item in load_task(name, str(data)).items for r in item.requests]
    assert ours == harness_requests[name]
