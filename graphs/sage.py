"""The SAGE state machine: decompose a task, answer each step, trigger, buffer, train, retry.

```
decompose -> route -> answer -> trigger --pass--> advance -> (next step: route) ... finish
               ^                  | fail
               |                  v
               |               buffer --not ready--> advance (or retry: next routed adapter)
               |                  | cluster ready
               |                  v
               +--- retry <--- attach <--- lora_store (ToolNode calling LoRAStoreTool)

finish --a failed plan made the plan cluster ready--> train_planner (the same tool)
```

With an ``LLMDecomposer`` on the graph's model, decompose routes the question to a
planner adapter and finish sends a failed plan to the buffer (``graphs.planning``).

Runtime dependencies (model, Trigger, buffer, store, decomposer) come through the
``SageContext`` context schema; the state holds only serialisable records, so every
checkpoint can be read back as a trace. Each node writes custom stream events
(``stream_mode="custom"``): step_started, answered, triggered, buffered, trial_started /
trial_done / adapter_kept (from the store), attached, retry, step_done, finished; and
each records how long it ran in the state's ``timings`` (``state.timed``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

from langchain_core.messages import AIMessage
from langgraph.graph import END, START, StateGraph

from sage_agent.context import SageContext, context_of, current_thread_id
from sage_agent.errors import DataError, DecompositionError
from sage_agent.graphs.planning import decompose_task, judge_plan, route_planner
from sage_agent.graphs.prompting import step_prompt
from sage_agent.graphs.state import BASE_MODEL, Ctx, SageInput, SageOutput, SageState, timed
from sage_agent.graphs.store_calls import pending, run_store_call, store_call, training_note
from sage_agent.records import (
    Answered,
    Attached,
    Attempt,
    Buffered,
    Decomposed,
    DecomposeFailed,
    Finished,
    Retry,
    StepDone,
    StepRecord,
    StepStarted,
    TaskResult,
    Training,
    Triggered,
)
from sage_agent.store.policy import Route
from sage_agent.tasks.families import ARITHMETIC, TaskFamily, family_named, family_of_task
from sage_agent.tasks.steps import AtomicStep

# nodes


@timed
def decompose(state: SageState, runtime: Ctx) -> SageState:
    thread = current_thread_id()
    task = state.get("task") or {"id": thread or "question", "question": state.get("question")}
    update: SageState = {"task": task, "thread_id": thread, "index": 0}
    context = context_of(runtime)
    try:
        family = family_of_task(task)
        if not family.multi_step:  # one step, made by its family: nothing to plan
            steps = family.steps(task)
        else:
            if not isinstance(task.get("question"), str) or not task["question"].strip():
                raise DecompositionError('the graph takes {"task": ...} or {"question": "..."}')
            adapter, plan = route_planner(context, task["question"])
            if plan is not None:
                update["plan"] = plan  # kept whether the plan parses or not
            steps = decompose_task(context, task, adapter, plan)
    except (DecompositionError, DataError) as error:
        runtime.stream_writer(
            DecomposeFailed(event="decompose_failed", task=task.get("id"), error=str(error))
        )
        return {**update, "steps": [], "error": f"decompose: {error}"}
    runtime.stream_writer(Decomposed(event="decomposed", task=task.get("id"), steps=len(steps)))
    return {**update, "steps": [s.to_dict() for s in steps], "attempts": [], "candidates": []}


@timed
def route(state: SageState, runtime: Ctx) -> SageState:
    """Prepare the next attempt of the current step: its prompt, reference and adapter.
    A retry takes the next candidate left by attach; a first attempt is routed."""
    context, attempts = context_of(runtime), state.get("attempts") or []
    steps = [AtomicStep(**s) for s in state["steps"]]
    step = steps[state["index"]]
    prompt, expression, reference, note = step_prompt(
        step, steps, state.get("records") or [], context.substitute, context.prompt
    )
    candidates = list(state.get("candidates") or [])
    routed = route_all = False
    if not attempts:
        route = context.policy.route(prompt, tag=step.tag, limit=context.max_retries)
        candidates, routed, route_all = list(route.adapters), bool(route.adapters), route.route_all
    attempt: Attempt = {
        "number": len(attempts) + 1,
        "kind": "answer" if not attempts else "retry",
        "prompt": prompt,
        "expression": expression,
        "reference": reference,
        "adapter": candidates.pop(0) if candidates else None,
        "routed": routed,
        "note": note,
    }
    if route_all:
        attempt["route_all"] = True
    if not attempts:
        runtime.stream_writer(
            StepStarted(event="step_started", step=step.id, question=step.question, prompt=prompt)
        )
    return {"attempt": attempt, "candidates": candidates}


@timed
def answer(state: SageState, runtime: Ctx) -> SageState:
    """Answer the attempt as the adaptation policy decides (``store.policy``): a routed
    first attempt asks the base model first where a sure answer is kept, and the adapter
    then goes back to the candidates, for a retry should the sure answer fail."""
    context, attempt = context_of(runtime), _current(state)
    policy = context.policy
    max_tokens = _max_tokens(state, context.max_tokens)
    tag, base = state["steps"][state["index"]]["tag"], None
    if attempt["routed"]:
        route = Route((attempt["adapter"],), bool(attempt.get("route_all")), tag)
        if policy.base_first(route):
            base = context.answerer.invoke(attempt["prompt"], adapter=None, max_tokens=max_tokens)
            if policy.choose(route, base) is None:
                return _base_kept(
                    state, attempt, base, runtime, "the base model is sure; not routed"
                )
            attempt["base_answer"] = base.text
    with contextlib.ExitStack() as held:
        name = None  # per call, so threads sharing the model never see each other's adapter
        if attempt["adapter"] is not None and context.store is not None:
            name, failure = held.enter_context(policy.loaded(attempt["adapter"]))
            if failure is not None:
                attempt.update(note=failure, adapter=None)
        if name is None and base is not None:
            message = base  # the adapter could not be loaded: the base model already answered
        else:
            message = context.answerer.invoke(
                attempt["prompt"], adapter=name, max_tokens=max_tokens
            )
    if base is not None and attempt["adapter"] is not None and not policy.keeps(message, base, tag):
        note = f"the base model is surer of its answer than adapter {attempt['adapter']}'s"
        return _base_kept(state, attempt, base, runtime, note, adapted=message.text)
    update: SageState = {"attempt": _answered(attempt, message, runtime)}
    if attempt["routed"] and attempt["adapter"] is not None:
        # The adapter answered past the base model (unsure, or not asked): should every
        # routed answer fail the Trigger, the base model answers last, so that routing
        # never costs a step the base model gets right.
        update["candidates"] = [*(state.get("candidates") or []), BASE_MODEL]
    return update


def _base_kept(
    state: SageState,
    attempt: Attempt,
    base: AIMessage,
    runtime: Ctx,
    note: str,
    adapted: str | None = None,
) -> SageState:
    """The base model's answer stands for a routed first attempt; its adapter goes back to
    the candidates, for a retry should that answer fail."""
    candidates = [attempt["adapter"], *(state.get("candidates") or [])]
    attempt.update(adapter=None, routed=False, note=note)
    attempt.pop("base_answer", None)
    if adapted is not None:
        attempt["adapter_answer"] = adapted
    return {"attempt": _answered(attempt, base, runtime), "candidates": candidates}


def _family(state: SageState) -> TaskFamily:
    """The family of the step under way (arithmetic for a step of an older checkpoint)."""
    return family_named(state["steps"][state["index"]].get("family", ARITHMETIC.name))


def _max_tokens(state: SageState, arithmetic: int) -> int:
    """An arithmetic step's cap is the context's; another family's is its own."""
    family = _family(state)
    return arithmetic if family.multi_step else family.max_tokens


def _current(state: SageState) -> Attempt:
    """A copy of the attempt under way, to update (the state's own is never mutated)."""
    attempt = state.get("attempt")
    assert attempt is not None  # route always comes first
    return Attempt(**attempt)


def _answered(attempt: Attempt, message: AIMessage, runtime: Ctx) -> Attempt:
    attempt["answer"] = message.text
    attempt["logits_margin"] = message.response_metadata.get("logits_margin_mean")
    runtime.stream_writer(
        Answered(event="answered", answer=message.text, adapter=attempt["adapter"])
    )
    return attempt


@timed
def trigger(state: SageState, runtime: Ctx) -> SageState:
    context, attempt = context_of(runtime), _current(state)
    family = _family(state)
    result = context.trigger.score(
        attempt["answer"],
        attempt["reference"],
        expression=attempt["expression"],
        logits_margin=attempt["logits_margin"],
        judge=None if family.multi_step else family.judge,
    )
    attempt.update(
        anomaly_score=result.anomaly_score,
        failed=result.failed,
        metrics=result.metrics,
        mode=result.mode,
        numeric_match=result.numeric_match,
        reference=result.reference,
    )
    observed = context.policy.observe(
        attempt["prompt"],
        state["steps"][state["index"]]["tag"],
        adapter=attempt["adapter"],
        failed=result.failed,
        reference=result.reference,
        expression=attempt["expression"],
    )
    if observed.note is not None:
        attempt["note"] = observed.note
    runtime.stream_writer(
        Triggered(
            event="triggered",
            anomaly_score=result.anomaly_score,
            failed=result.failed,
            attempt=attempt["number"],
        )
    )
    return {"attempt": attempt, "attempts": [*(state.get("attempts") or []), attempt]}


@timed
def buffer(state: SageState, runtime: Ctx) -> SageState:
    """Add the failure to the Trigger Buffer; call the LoRA Store when its cluster
    ``needs_training``."""
    context, attempt = context_of(runtime), _current(state)
    step = AtomicStep(**state["steps"][state["index"]])
    assert context.buffer is not None  # after_trigger only comes here with a buffer
    thread = current_thread_id()
    assignment = context.buffer.add(
        attempt["prompt"],
        tag=step.tag,
        payload={
            "step_id": step.id,
            "expression": attempt["expression"],
            "reference": attempt["reference"],
            "answer": attempt["answer"],
            "adapter": attempt["adapter"],
        },
        # One sample per thread and step: a node re-run after a crash adds it once.
        key=f"{thread}:{step.id}" if thread else None,
    )
    note = assignment.note()
    attempt["buffer"] = note
    runtime.stream_writer(Buffered(event="buffered", **note, tag=assignment.tag))
    update: SageState = {"attempt": attempt, "attempts": [*state["attempts"][:-1], attempt]}
    cluster_id = assignment.cluster_id
    call = store_call(context, cluster_id) if cluster_id is not None else None
    if call is not None:
        runtime.stream_writer(Training(event="training", **call.tool_calls[0]["args"]))
        update["store_calls"] = [call]
    return update


@timed
def lora_store(state: SageState, runtime: Ctx) -> SageState:
    """The LoRA Store tool's call (``store_calls.run_store_call``)."""
    return run_store_call(state, context_of(runtime))


@timed
def attach(state: SageState, runtime: Ctx) -> SageState:
    """Read the LoRA Store's result; its adapters, best first, become the candidates."""
    note = training_note(state["store_calls"][-1])
    attempts = list(state["attempts"])
    attempts[-1] = {**attempts[-1], "training": note}
    candidates: list[str | None] = note["adapters"][: context_of(runtime).max_retries]
    if BASE_MODEL in (state.get("candidates") or []):
        candidates.append(BASE_MODEL)  # the new adapters first; the base model stays last
    runtime.stream_writer(Attached(event="attached", adapters=candidates, summary=note["summary"]))
    return {"attempts": attempts, "candidates": candidates}


@timed
def retry(state: SageState, runtime: Ctx) -> SageState:
    runtime.stream_writer(
        Retry(event="retry", adapter=state["candidates"][0], left=len(state["candidates"]))
    )
    return {}


@timed
def advance(state: SageState, runtime: Ctx) -> SageState:
    step, attempts = state["steps"][state["index"]], state["attempts"]
    last, first = attempts[-1], attempts[0]
    record: StepRecord = {
        **step,
        "attempts": attempts,
        "answer": last["answer"],
        "reference": last["reference"],
        "passed": not last["failed"],
        "first_passed": not first["failed"],
        "retries": sum(a["kind"] == "retry" for a in attempts),
        "retry_success": len(attempts) > 1 and not last["failed"] and last["adapter"] is not None,
        "adapter": last["adapter"],
    }
    runtime.stream_writer(
        StepDone(
            event="step_done", step=step["id"], passed=record["passed"], retries=record["retries"]
        )
    )
    return {
        "records": [record],
        "index": state["index"] + 1,
        "attempt": None,
        "attempts": [],
        "candidates": [],
    }


@timed
def finish(state: SageState, runtime: Ctx) -> SageState:
    task, records = state["task"], state.get("records") or []
    answer = records[-1]["answer"] if records else None
    try:
        family = family_of_task(task)
    except DataError:
        family = None  # decompose said so already
    reference = family.target(task) if family is not None else None
    correct = None
    if family is not None and reference is not None and answer is not None:
        correct = family.judge(answer, reference)
    result: TaskResult = {
        "task": task.get("id"),
        "answer": answer,
        "reference": reference,
        "correct": correct,
        "steps": len(records),
        "steps_passed": sum(r["passed"] for r in records),
        "error": state.get("error"),
    }
    runtime.stream_writer(Finished(event="finished", **result))
    update: SageState = {"result": result, "answer": answer}
    plan, call = judge_plan(state, context_of(runtime), reference)
    if plan is not None:
        update["plan"] = plan
    if call is not None:
        runtime.stream_writer(Training(event="training", **call.tool_calls[0]["args"]))
        update["store_calls"] = [call]
    return update


@timed
def train_planner(state: SageState, runtime: Ctx) -> SageState:
    """Train the plan cluster a failed plan made ready (the LoRA Store tool, as for the
    steps), and note the outcome in the plan's note."""
    update = run_store_call(state, context_of(runtime))
    plan = state.get("plan") or {"adapter": None}
    return {**update, "plan": {**plan, "training": training_note(update["store_calls"][-1])}}


# edges


def after_decompose(state: SageState) -> Literal["route", "finish"]:
    return "route" if state.get("steps") else "finish"


def after_trigger(state: SageState, runtime: Ctx) -> Literal["advance", "buffer", "retry"]:
    attempts = state["attempts"]
    if not attempts[-1]["failed"]:
        return "advance"
    if len(attempts) == 1:
        return "buffer" if context_of(runtime).buffer is not None else "advance"
    return "retry" if state.get("candidates") else "advance"


def after_buffer(state: SageState) -> Literal["lora_store", "retry", "advance"]:
    """Train when the cluster is ready; otherwise try the next routed adapter, if any
    (the first attempt already used the best one)."""
    if pending(state):
        return "lora_store"
    return "retry" if state.get("candidates") else "advance"


def after_finish(state: SageState) -> Literal["train_planner", "__end__"]:
    return "train_planner" if pending(state) else END


def after_attach(state: SageState) -> Literal["retry", "advance"]:
    return "retry" if state.get("candidates") else "advance"


def after_advance(state: SageState) -> Literal["route", "finish"]:
    return "route" if state["index"] < len(state["steps"]) else "finish"


def build_sage_graph(context_schema: type[Any] = SageContext) -> StateGraph:
    """The SAGE StateGraph (not compiled): compile it with a checkpointer of your own, or
    use :class:`sage_agent.SageAgent`, which compiles it on the project's database.
    ``context_schema`` is SageContext, or a schema whose values resolve to one (see
    ``sage_agent.context.ContextSource``)."""
    graph = StateGraph(
        SageState,
        context_schema=context_schema,
        input_schema=SageInput,
        output_schema=SageOutput,
    )
    graph.add_node("decompose", decompose)
    graph.add_node("route", route)
    graph.add_node("answer", answer)
    graph.add_node("trigger", trigger)
    graph.add_node("buffer", buffer)
    graph.add_node("lora_store", lora_store)
    graph.add_node("attach", attach)
    graph.add_node("retry", retry)
    graph.add_node("advance", advance)
    graph.add_node("finish", finish)
    graph.add_node("train_planner", train_planner)
    graph.add_edge(START, "decompose")
    graph.add_conditional_edges("decompose", after_decompose)
    graph.add_edge("route", "answer")
    graph.add_edge("answer", "trigger")
    graph.add_conditional_edges("trigger", after_trigger)
    graph.add_conditional_edges("buffer", after_buffer)
    graph.add_edge("lora_store", "attach")
    graph.add_conditional_edges("attach", after_attach)
    graph.add_edge("retry", "route")
    graph.add_conditional_edges("advance", after_advance)
    graph.add_conditional_edges("finish", after_finish)
    graph.add_edge("train_planner", END)
    return graph
