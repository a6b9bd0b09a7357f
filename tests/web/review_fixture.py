"""A finished review's result as the core stores it (assistant/jobs/review.py), for the review card's tests: a
verified blocker with a checked excerpt and a failing proof, an unverified major with an invalid citation and no
proof, a nit whose proof passes on the head, and a minor whose proof was not run."""
from __future__ import annotations

from assistant.domain.review import (PROOF_CONFIRMED, PROOF_NOT_RUN, PROOF_PASSES, Finding, Proof, ProofRun,
                                     ReviewResult, SuiteRun)

PROOF_PATCH = ("diff --git a/test_review_proof.py b/test_review_proof.py\nnew file mode 100644\n"
               "--- /dev/null\n+++ b/test_review_proof.py\n@@ -0,0 +1,2 @@\n+import unittest\n+# proof\n")
HEAD_LOG = ("test_odd_length_keeps_the_last_item (test_review_proof.ProofTest) ... FAIL\n"
            "AssertionError: Lists differ: [[1, 2], [3, 4]] != [[1, 2], [3, 4], [5]]\n"
            "Ran 1 test in 0.001s\nFAILED (failures=1)\n")


def blocker() -> Finding:
    proof = Proof(command="python3 -m unittest -v test_review_proof 2>&1", test_path="test_review_proof.py",
                  test_content="import unittest\n# proof\n", status=PROOF_CONFIRMED,
                  head=ProofRun("head", "python3 -m unittest -v test_review_proof 2>&1", "aaa111", 1, lines=4),
                  base=ProofRun("base", "python3 -m unittest -v test_review_proof 2>&1", "bbb222", 0, lines=3),
                  patch=PROOF_PATCH)
    return Finding(id="f1", title="chunked drops the last item of an odd-length list", severity="blocker",
                   body="The range stops one short 【F:chunks.py†L3-L3】.",
                   citations=[{"text": "【F:chunks.py†L3-L3】", "kind": "file", "target": "chunks.py", "start": 3,
                               "end": 3, "valid": True, "reason": "",
                               "excerpt": "    return [items[i:i + size] for i in range(0, len(items) - 1, size)]"}],
                   proof=proof, verified=True)


def result(verdict: str = "changes_requested") -> ReviewResult:
    invented = Finding(id="f2", title="chunked is slow on huge lists", severity="major",
                       body="It copies slices 【F:chunks.py†L90-L95】.",
                       citations=[{"text": "【F:chunks.py†L90-L95】", "kind": "file", "target": "chunks.py", "start": 90,
                                   "end": 95, "valid": False, "reason": "chunks.py has 3 lines"}])
    nit = Finding(id="f3", title="the docstring could say more", severity="nit", body="Say what happens to the rest.",
                  proof=Proof(command="python3 -c 'import chunks' 2>&1", status=PROOF_PASSES,
                              head=ProofRun("head", "python3 -c 'import chunks' 2>&1", "ccc333", 0, lines=1),
                              base=ProofRun("base", "python3 -c 'import chunks' 2>&1", "ddd444", 0, lines=1)))
    minor = Finding(id="f4", title="a proof at a taken path", severity="minor", body="x",
                    proof=Proof(command="true", test_path="test_chunks.py", status=PROOF_NOT_RUN,
                                reason="test_chunks.py is a file of the repository; a proof test needs a new path"))
    return ReviewResult(verdict=verdict, base_commit="1" * 40, head_commit="2" * 40, mode="branch",
                        summary="Reviewed [see](https://example.invalid/x).", model_verdict="changes_requested",
                        model_verdict_consistent=verdict == "changes_requested",
                        findings=[invented, nit, blocker(), minor],
                        tests=[SuiteRun("base", "python3 -m unittest -v", "eee555", 0, 5),
                               SuiteRun("head", "python3 -m unittest -v", "fff666", 0, 5)],
                        proof_patch=PROOF_PATCH)
