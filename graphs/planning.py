"""SAGE applied to the planner: when the decomposer is an ``LLMDecomposer`` on the graph's
own model, the decompose node routes the question to a planner adapter, and the finish
node judges the plan on a task with a worked solution. A plan that did not parse, or
whose result (computed by the verifier) is not the task's answer, goes to the Trigger
Buffer under the tag "plan" with the solution's plan as its reference; once its cluster
``needs_training``, the same LoRA Store tool trains planner adapters on those corrected
plans. Plans follow the adaptation policy as answers do: a right plan of the base model
becomes a canary of the tag, and a planner adapter's plans count toward its wins.
"""

from __future__ import annotations

from langchain_core.messages import AIMessage

from sage_agent.context import SageContext, current_thread_id
from sage_agent.graphs.state import SageState
from sage_agent.graphs.store_calls import store_call
from sage_agent.records import PlanNote, Task
from sage_agent.scoring.numeric import numbers_match, parse_number
from sage_agent.tasks.plans import PLAN_TAG, gold_plan
from sage_agent.tasks.steps import AtomicStep


def route_planner(context: SageContext, question: str) -> tuple[str | None, PlanNote | None]:
    """(the planner adapter routed to the question or None, the plan's note); (None, None)
    when the decomposer is not a planner. A planner adapter serves every question (its
    cluster is all the planner's failures)."""
    if context.planner is None:
        return None, None
    route = context.policy.route(question, tag=PLAN_TAG, limit=1, nearest=True)
    return route.adapter, {"adapter": None}


def decompose_task(
    context: SageContext, task: Task, adapter: str | None, note: PlanNote | None
) -> list[AtomicStep]:
    """The task's steps. A planner plans with its routed ``adapter``, kept loaded while it
    plans; one that cannot be loaded leaves the base model, and ``note`` says so."""
    if context.planner is None or adapter is None or note is None:
        return context.decomposer(task)
    with context.policy.loaded(adapter) as (name, failure):
        if failure is not None:
            note["failure"] = f"planner {failure}"
        else:
            note["adapter"] = adapter
        return context.planner(task, adapter=name)


def judge_plan(
    state: SageState, context: SageContext, answer: str | None
) -> tuple[PlanNote | None, AIMessage | None]:
    """The plan's note after the finish node judged it against the task's final
    ``answer``, and the store call that trains the plan cluster when this failure made it
    ready. Nothing to judge without a planner or a worked solution."""
    planner, note, task = context.planner, state.get("plan"), state["task"]
    reference = gold_plan(task) if planner is not None and note is not None else None
    if planner is None or note is None or reference is None:
        return note, None
    prompt = planner.prompt(task["question"])
    failure = _why_failed(state, answer)
    observed = context.policy.observe(
        prompt, PLAN_TAG, adapter=note["adapter"], failed=failure is not None, reference=reference
    )
    if failure is None:
        return note, None
    note = {**note, "failure": failure}
    if not observed.buffer or not context.train or context.buffer is None:
        return note, None
    thread = current_thread_id()
    assignment = context.buffer.add(
        task["question"],
        tag=PLAN_TAG,
        payload={"prompt": prompt, "reference": reference, "answer": failure},
        key=f"{thread}:plan" if thread else None,
    )
    note["buffer"] = assignment.note()
    cluster_id = assignment.cluster_id
    return note, store_call(context, cluster_id) if cluster_id is not None else None


def _why_failed(state: SageState, answer: str | None) -> str | None:
    error = state.get("error")
    if error and error.startswith("decompose"):
        return f"the plan did not parse: {error.removeprefix('decompose: ')}"
    steps = state.get("steps") or []
    if answer is None:
        return None
    planned = steps[-1]["reference"] if steps else None
    if not numbers_match(parse_number(planned), parse_number(answer)):
        return f"the plan computes {planned}, the task's answer is {answer}"
    return None
