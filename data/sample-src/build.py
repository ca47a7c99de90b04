"""Build the bundled sample drops from the team-written Q&A in this folder (deterministic).

    python data/sample-src/build.py            # writes data/drops/sample-gardening/Posts.xml
                                               # and data/drops/sample-update.7z
The first drop is in the current dump format (``Tags="|a|b|"``, ContentLicense, BOM); the second is a site
``.7z`` in the old format (``Tags="<a><b>"``) that edits a few posts of the first and adds new ones. Both carry
the edge cases the reader must handle: PostTypeId 4/5/7 rows, the two fake posts real dumps carry, answers whose
question is absent, unanswered questions, scores around the default threshold, long bodies.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).parent
DROPS = HERE.parent / "drops"
FIRST = ["vegetables.json", "fruit-soil.json", "lawn-pests-indoor.json"]
SECOND = "drop2-new.json"
LICENSE = "CC BY-SA 4.0"


def esc(value: str) -> str:
    """Attribute escaping as the dumps do it (newlines as &#xA;)."""
    return (
        value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;").replace("\n", "&#xA;")
    )


def ts(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def row(attrs: dict) -> str:
    return "  <row " + " ".join(f'{k}="{esc(str(v))}"' for k, v in attrs.items() if v is not None) + " />"


def tags(values: list[str], old: bool) -> str:
    return "".join(f"<{t}>" for t in values) if old else "|" + "|".join(values) + "|"


class Site:
    """Turns question dicts into rows with ids, users, dates and scores."""

    def __init__(self, seed: int, start_id: int, start: dt.datetime, old: bool):
        self.rnd = random.Random(seed)
        self.next_id = start_id
        self.when = start
        self.old = old

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def tick(self, hours: float) -> dt.datetime:
        self.when += dt.timedelta(hours=hours, seconds=self.rnd.randint(0, 3599), milliseconds=self.rnd.randint(0, 999))
        return self.when

    def score(self, best: bool) -> int:
        # Most posts land around the default min_score of 5, with a long tail and a few negatives.
        base = self.rnd.choice([-1, 0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 11, 14, 19, 27, 41])
        return base + (self.rnd.randint(2, 9) if best else 0)

    def license(self) -> dict:
        return {} if self.old else {"ContentLicense": LICENSE}

    def question(self, q: dict) -> list[dict]:
        qid = self.new_id()
        created = self.tick(self.rnd.uniform(2, 30))
        answers = []
        for i, a in enumerate(q["answers"]):
            aid = self.new_id()
            when = created + dt.timedelta(hours=self.rnd.uniform(0.5, 24 * 20 * (i + 1)))
            answers.append(
                {"Id": aid, "PostTypeId": 2, "ParentId": qid, "CreationDate": ts(when),
                 "Score": self.score(best=i == 0), "Body": a["body"], "OwnerUserId": self.rnd.randint(2, 400),
                 "LastActivityDate": ts(when + dt.timedelta(days=self.rnd.choice([0, 0, 1, 30]))),
                 "CommentCount": self.rnd.randint(0, 6), **self.license()}
            )
        accepted = answers[0]["Id"] if answers and self.rnd.random() < 0.6 else None
        last = max([created] + [dt.datetime.fromisoformat(a["LastActivityDate"]) for a in answers])
        question = {
            "Id": qid, "PostTypeId": 1, "AcceptedAnswerId": accepted, "CreationDate": ts(created),
            "Score": self.score(best=False), "ViewCount": self.rnd.randint(20, 40000), "Body": q["body"],
            "OwnerUserId": self.rnd.randint(2, 400), "LastActivityDate": ts(last), "Title": q["title"],
            "Tags": tags(q["tags"], self.old), "AnswerCount": len(answers), "CommentCount": self.rnd.randint(0, 8),
            **self.license(),
        }
        return [question, *answers]


def write_posts(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ['\ufeff<?xml version="1.0" encoding="utf-8"?>', "<posts>", *(row(r) for r in rows), "</posts>", ""]
    path.write_text("\n".join(lines), encoding="utf-8", newline="\n")


def first_drop(questions: list[dict]) -> list[dict]:
    site = Site(seed=7, start_id=0, start=dt.datetime(2021, 3, 1, 9), old=False)
    rows: list[dict] = []
    for q in questions:
        rows.extend(site.question(q))
    # Tag wiki excerpt/body pairs (PostTypeId 4/5) and a privilege wiki (7): real dumps carry them.
    for tag in ("tomatoes", "soil-ph", "pest-control"):
        for kind, body in ((4, f"<p>Questions about {tag.replace('-', ' ')}.</p>"), (5, f"<p>Use the <code>{tag}</code> tag for questions about {tag.replace('-', ' ')}: growing, problems and harvest.</p>")):
            rows.append({"Id": site.new_id(), "PostTypeId": kind, "CreationDate": ts(site.tick(1)), "Score": 0,
                         "Body": body, "OwnerUserId": -1, "LastActivityDate": ts(site.when), "CommentCount": 0,
                         "ContentLicense": LICENSE})
    rows.append({"Id": site.new_id(), "PostTypeId": 7, "CreationDate": ts(site.tick(1)), "Score": 0,
                 "Body": "<p>Privilege description.</p>", "OwnerUserId": -1, "LastActivityDate": ts(site.when),
                 "ContentLicense": LICENSE})
    # Answers whose question is not in the dump (deleted questions).
    for i, body in enumerate((
        "<p>Cut the stems back to two buds above the graft union in late winter; the plant will push strong new canes by May.</p>",
        "<p>Yes, coffee grounds are only mildly acidic once brewed (around pH 6.5), so they will <em>not</em> acidify your soil much.</p>",
    )):
        rows.append({"Id": site.new_id(), "PostTypeId": 2, "ParentId": 900_000 + i, "CreationDate": ts(site.tick(3)),
                     "Score": 6 + i, "Body": body, "OwnerUserId": 51, "LastActivityDate": ts(site.when),
                     "CommentCount": 0, "ContentLicense": LICENSE})
    # The two deliberately fake posts that dumps carry since 2024.
    rows.append({"Id": 1000000001, "PostTypeId": 1, "CreationDate": ts(site.tick(1)), "Score": 0,
                 "Body": "<p>This post is a placeholder and not part of the site content.</p>", "OwnerUserId": -1,
                 "LastActivityDate": ts(site.when), "Title": "Placeholder question", "Tags": "|placeholder|",
                 "AnswerCount": 1, "CommentCount": 0, "ContentLicense": LICENSE})
    rows.append({"Id": 1000000010, "PostTypeId": 2, "ParentId": 1000000001, "CreationDate": ts(site.tick(1)),
                 "Score": 0, "Body": "<p>Placeholder answer.</p>", "OwnerUserId": -1,
                 "LastActivityDate": ts(site.when), "CommentCount": 0, "ContentLicense": LICENSE})
    return rows


def second_drop(first: list[dict], questions: list[dict]) -> list[dict]:
    """Edits of a few first-drop posts (newer LastActivityDate, old tag format) plus new questions."""
    site = Site(seed=11, start_id=max(r["Id"] for r in first if r["Id"] < 1_000_000_000) + 100,
                start=dt.datetime(2025, 2, 1, 9), old=True)
    rows: list[dict] = []
    edit_time = dt.datetime(2025, 1, 20, 12)
    answered = [r for r in first if r["PostTypeId"] == 2 and r.get("ParentId", 0) < 900_000]
    by_id = {r["Id"]: r for r in first}
    # Edit posts that pass the default filters (score >= 5, short), so the edits show up in qa_pairs.
    editable = [r for r in answered if r["Score"] >= 5 and len(r["Body"]) < 700 and by_id[r["ParentId"]]["Score"] >= 5]
    for i, answer in enumerate(editable[2:60:10]):
        edited = dict(answer)
        edited.pop("ContentLicense", None)
        edited["Body"] = answer["Body"] + f"\n\n<p><strong>Edit (2025):</strong> after another season I would add: check again in spring, results vary by {['soil', 'climate', 'variety', 'exposure', 'watering'][i % 5]}.</p>"
        edited["Score"] = answer["Score"] + 3
        edited["LastActivityDate"] = ts(edit_time + dt.timedelta(hours=i))
        rows.append(edited)
        question = dict(by_id[answer["ParentId"]])
        question.pop("ContentLicense", None)
        question["Tags"] = tags([t for t in question["Tags"].strip("|").split("|") if t], old=True)
        question["LastActivityDate"] = ts(edit_time + dt.timedelta(hours=i))
        if i == 0:
            question["Title"] = question["Title"].rstrip("?") + " (updated)?"
        rows.append(question)
    # A late answer to a first-drop question: the join must work across drops.
    late_parent = answered[3]["ParentId"]
    rows.append({"Id": site.new_id(), "PostTypeId": 2, "ParentId": late_parent, "CreationDate": ts(site.tick(1)),
                 "Score": 12, "Body": "<p>Coming back to this a year later: the approach in the accepted answer worked for me, but I also <em>mulched</em> 5&nbsp;cm deep and watered at the base only.</p>",
                 "OwnerUserId": 77, "LastActivityDate": ts(site.when), "CommentCount": 1})
    for q in questions:
        rows.extend(site.question(q))
    rows.append({"Id": site.new_id(), "PostTypeId": 5, "CreationDate": ts(site.tick(1)), "Score": 0,
                 "Body": "<p>Tag wiki body.</p>", "OwnerUserId": -1, "LastActivityDate": ts(site.when)})
    return rows


def main() -> None:
    import py7zr

    first_questions = [q for name in FIRST for q in json.loads((HERE / name).read_text(encoding="utf-8"))]
    extra = sorted(p.name for p in HERE.glob("*.json") if p.name not in FIRST + [SECOND])
    for name in extra:
        first_questions += json.loads((HERE / name).read_text(encoding="utf-8"))
    titles = [q["title"] for q in first_questions]
    assert len(titles) == len(set(titles)), "duplicate titles in the sample sources"
    rows1 = first_drop(first_questions)
    write_posts(DROPS / "sample-gardening" / "Posts.xml", rows1)
    rows2 = second_drop(rows1, json.loads((HERE / SECOND).read_text(encoding="utf-8")))
    staging = HERE / ".build"
    write_posts(staging / "Posts.xml", rows2)
    (staging / "Users.xml").write_text('\ufeff<?xml version="1.0" encoding="utf-8"?>\n<users>\n</users>\n', encoding="utf-8")
    archive = DROPS / "sample-update.7z"
    archive.unlink(missing_ok=True)
    with py7zr.SevenZipFile(archive, "w") as z:
        for name in ("Posts.xml", "Users.xml"):
            z.write(staging / name, arcname=name)
    for name in ("Posts.xml", "Users.xml"):
        (staging / name).unlink()
    staging.rmdir()
    q = sum(r["PostTypeId"] == 1 for r in rows1)
    a = sum(r["PostTypeId"] == 2 for r in rows1)
    print(f"sample-gardening: {len(rows1)} rows ({q} questions, {a} answers); sample-update.7z: {len(rows2)} rows",
          file=sys.stderr)


if __name__ == "__main__":
    main()
