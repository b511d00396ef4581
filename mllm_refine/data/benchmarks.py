"""VQA benchmarks read from their official files (local only; nothing is downloaded).

Each dataset takes the question/annotation file(s) and the image folder, keeps the official
question id as the sample id, and puts the benchmark's own labels (question and answer types)
into ``Sample.meta``; ``meta["type"]`` is the label scores are broken down by.
"""

from __future__ import annotations

from pathlib import Path

from mllm_refine.data.files import Row, Rows, existing, field_of, read_json, read_jsonl


def _answers(item: dict, where: str) -> list[str]:
    """``answers`` as strings, from either plain strings or ``{"answer": ...}`` records."""
    answers = item.get("answers")
    if not isinstance(answers, list):
        raise ValueError(f"{where}: 'answers' must be a list")
    return [str(a["answer"]) if isinstance(a, dict) else str(a) for a in answers]


class VQAv2(Rows):
    """VQAv2 (and OK-VQA, same format): official questions JSON, optional annotations JSON
    (test splits have none), COCO image folder. Images are ``COCO_<data_subtype>_<id:012d>.jpg``."""

    default_metric = "vqa_accuracy"

    def __init__(
        self,
        questions: str,
        annotations: str | None = None,
        images: str = ".",
        limit: int | None = None,
        image_pattern: str = "COCO_{subtype}_{image_id:012d}.jpg",
    ) -> None:
        qdata = read_json(questions, "questions")
        root = existing(images, "images", folder=True)
        where = f"data.questions: {questions}"
        qs = field_of(qdata, "questions", where)
        subtype = qdata.get("data_subtype", "")
        ann: dict[int, dict] = {}
        if annotations is not None:
            adata = read_json(annotations, "annotations")
            for n, a in enumerate(field_of(adata, "annotations", f"data.annotations: {annotations}")):
                ann[field_of(a, "question_id", f"data.annotations: {annotations}: annotations[{n}]")] = a
        rows = []
        for n, q in enumerate(qs):
            w = f"{where}: questions[{n}]"
            qid, image_id = field_of(q, "question_id", w), field_of(q, "image_id", w)
            answers, meta = None, {"image_id": image_id}
            if annotations is not None:
                if qid not in ann:
                    raise ValueError(f"data.annotations: {annotations}: no annotation for question_id {qid}")
                a = ann[qid]
                answers = _answers(a, f"data.annotations: question_id {qid}")
                meta.update(type=a.get("answer_type"), question_type=a.get("question_type"),
                            multiple_choice_answer=a.get("multiple_choice_answer"))  # fmt: skip
            image = root / image_pattern.format(subtype=subtype, image_id=image_id)
            rows.append(Row(str(qid), str(field_of(q, "question", w)), image, answers, meta))
        super().__init__(rows, limit)


class GQA(Rows):
    """GQA balanced questions (``{qid: {imageId, question, answer, types, ...}}``), images
    ``<imageId>.jpg``. Scored by exact match, as GQA's accuracy is."""

    def __init__(self, path: str, images: str = ".", limit: int | None = None) -> None:
        data = read_json(path, "path")
        root = existing(images, "images", folder=True)
        if not isinstance(data, dict):
            raise ValueError(f"data.path: {path}: expected a mapping of question id to question")
        rows = []
        for qid, q in data.items():
            w = f"data.path: {path}: {qid}"
            types = q.get("types") or {}
            answer = q.get("answer")
            meta = {"image_id": field_of(q, "imageId", w), "type": types.get("structural"),
                    "semantic": types.get("semantic"), "detailed": types.get("detailed"),
                    "full_answer": q.get("fullAnswer")}  # fmt: skip
            image = root / f"{q['imageId']}.jpg"
            rows.append(Row(str(qid), str(field_of(q, "question", w)), image, None if answer is None else [str(answer)], meta))
        super().__init__(rows, limit)


class TextVQA(Rows):
    """TextVQA (``{"data": [{question_id, question, image_id, answers, ...}]}``), images
    ``<image_id>.jpg`` (val images live in ``train_images``)."""

    default_metric = "vqa_accuracy"

    def __init__(self, path: str, images: str = ".", limit: int | None = None) -> None:
        data = read_json(path, "path")
        root = existing(images, "images", folder=True)
        rows = []
        for n, q in enumerate(field_of(data, "data", f"data.path: {path}")):
            w = f"data.path: {path}: data[{n}]"
            answers = _answers(q, w) if "answers" in q else None
            meta = {"image_id": field_of(q, "image_id", w), "image_classes": q.get("image_classes")}
            image = root / f"{q['image_id']}.jpg"
            rows.append(Row(str(field_of(q, "question_id", w)), str(field_of(q, "question", w)), image, answers, meta))
        super().__init__(rows, limit)


class VizWiz(Rows):
    """VizWiz VQA (a list of ``{image, question, answers, answer_type, answerable}``); the
    sample id is the image name without extension."""

    default_metric = "vqa_accuracy"

    def __init__(self, path: str, images: str = ".", limit: int | None = None) -> None:
        data = read_json(path, "path")
        root = existing(images, "images", folder=True)
        if not isinstance(data, list):
            raise ValueError(f"data.path: {path}: expected a list of questions")
        rows = []
        for n, q in enumerate(data):
            w = f"data.path: {path}: [{n}]"
            name = str(field_of(q, "image", w))
            answers = _answers(q, w) if "answers" in q else None
            meta = {"type": q.get("answer_type"), "answerable": q.get("answerable")}
            rows.append(Row(Path(name).stem, str(field_of(q, "question", w)), root / name, answers, meta))
        super().__init__(rows, limit)


class DocVQA(Rows):
    """DocVQA (``{"data": [{questionId, question, image, answers, question_types, ...}]}``);
    ``image`` is relative to ``images`` (default: the JSON file's folder). Scored by ANLS."""

    default_metric = "anls"

    def __init__(self, path: str, images: str | None = None, limit: int | None = None) -> None:
        data = read_json(path, "path")
        root = existing(images, "images", folder=True) if images is not None else Path(path).parent
        rows = []
        for n, q in enumerate(field_of(data, "data", f"data.path: {path}")):
            w = f"data.path: {path}: data[{n}]"
            answers = _answers(q, w) if "answers" in q else None
            types = q.get("question_types") or []
            meta = {"type": types[0] if types else None, "question_types": types, "doc_id": q.get("docId"),
                    "page": q.get("ucsf_document_page_no")}  # fmt: skip
            image = root / str(field_of(q, "image", w))
            rows.append(Row(str(field_of(q, "questionId", w)), str(field_of(q, "question", w)), image, answers, meta))
        super().__init__(rows, limit)


class POPE(Rows):
    """POPE (one JSON object a line: ``question_id``, ``image``, ``text``, ``label``), images
    under ``images`` (COCO val2014 for the official files). The file name's stem (for example
    ``coco_pope_random``) is kept as ``meta["type"]``."""

    default_metric = "pope"

    def __init__(self, path: str, images: str = ".", limit: int | None = None) -> None:
        data = read_jsonl(path, "path")
        root = existing(images, "images", folder=True)
        subset = Path(path).stem
        rows = []
        for n, q in enumerate(data, 1):
            w = f"data.path: {path}:{n}"
            label = q.get("label")
            image = root / str(field_of(q, "image", w))
            meta = {"type": subset, "image": q["image"]}
            rows.append(Row(str(field_of(q, "question_id", w)), str(field_of(q, "text", w)), image,
                            None if label is None else [str(label)], meta))  # fmt: skip
        super().__init__(rows, limit)
