-------------------------------- MODULE RTT --------------------------------
(***************************************************************************)
(* The apply protocol of RTT: scan -> plan -> 2PC -> verify -> rollback.   *)
(*                                                                         *)
(* This module is the design of record for the fabric's 2PC participant    *)
(* (issue 4) and the controller's coordinator (issue 7). It is written     *)
(* before them on purpose: the code is meant to follow the actions named   *)
(* here, and spec/invariants.md maps every invariant to the code that      *)
(* checks it.                                                              *)
(*                                                                         *)
(* The protocol, in short:                                                 *)
(*  - The coordinator scans the fabric and accepts a plan only if the      *)
(*    observed graph is the plan's base graph (ScanAndPlan). The plan is a *)
(*    sequence of batches; every step of a batch carries its inverse.      *)
(*  - Each batch runs as one 2PC transaction over the participants whose   *)
(*    route tables it changes.                                             *)
(*    A participant force-logs PREPARED and reserves lanes before it ACKs, *)
(*    or NACKs with a reason. The coordinator force-logs COMMIT or ABORT   *)
(*    in its WAL before it tells anyone.                                   *)
(*  - Presumed abort: a transaction with no logged decision is aborted. A  *)
(*    participant with a PREPARED record asks the coordinator, which       *)
(*    answers from its WAL, or "abort" when the WAL has no decision and    *)
(*    the transaction is not the one it is running right now.              *)
(*  - After the last batch, Verify compares the observed graph with the    *)
(*    desired one. A NACK (or a failed verify) starts the rollback: the    *)
(*    inverses of the committed batches, newest first, each as its own     *)
(*    2PC transaction.                                                     *)
(*  - The coordinator and every participant may crash and recover. The     *)
(*    coordinator keeps only its WAL and an incarnation number (epoch); a  *)
(*    participant keeps only its PREPARED/COMMIT log and its route table.  *)
(*                                                                         *)
(* Routes are abstract: a link is [from, cls, to] over a few symbols, the  *)
(* participant that hosts `from` owns the link, and the slot rule says no  *)
(* two active links share (from, cls) unless cls = "bus".                  *)
(*                                                                         *)
(* The Bug* constants each re-introduce one known mistake. They are FALSE  *)
(* in the green configs; each MC*_bug.cfg turns one on and TLC must find a *)
(* counterexample. They exist so that the invariants are shown to bite.    *)
(***************************************************************************)
EXTENDS Naturals, Sequences, FiniteSets

CONSTANTS
    Participants,   \* the fabric nodes (the 2PC participants)
    Owner,          \* Owner[s] = the node hosting symbol s, so the links from s
    Old,            \* the base graph the plan was computed against
    Desired,        \* the graph the plan must reach
    Batches,        \* Batches[i] = the steps of batch i, as cut by the planner
    MaxCrashes,     \* crash budget, shared by the coordinator and participants
    MaxCoordCrashes \* how many of those may hit the coordinator

CONSTANTS
    BugAnnounceBeforeLog,   \* coordinator sends COMMIT, then logs it
    BugForgetInverse,       \* rollback skips the inverse of the newest batch
    BugPresumeCommit,       \* in-doubt with no logged decision => commit
    BugAckBeforeLog,        \* participant ACKs before PREPARED is durable
    BugLeakLaneOnAbort,     \* participant keeps the lanes of an aborted txn
    BugSeqResetOnRecover,   \* coordinator restarts its WAL sequence at 0
    BugNoInquiry            \* a prepared participant never asks; it just waits

-----------------------------------------------------------------------------
(***************************************************************************)
(* Links, steps, batches and the graphs they produce.                      *)
(***************************************************************************)
NB == Len(Batches)
BatchIds == 1..NB

Max(S) == CHOOSE x \in S : \A y \in S : y <= x
Min(S) == CHOOSE x \in S : \A y \in S : x <= y

LinksOf(steps, op) == {s.link : s \in {x \in steps : x.op = op}}

\* A batch removes, then adds. Applying its inverse undoes it, provided the
\* planner contract below holds (adds are new, removes exist).
Apply(G, steps) == (G \ LinksOf(steps, "remove")) \cup LinksOf(steps, "add")

Invert(step) ==
    [op |-> IF step.op = "add" THEN "remove" ELSE "add", link |-> step.link]

RECURSIVE GraphAfter(_)
\* The graph once batches 1..k have been committed everywhere.
GraphAfter(k) == IF k = 0 THEN Old ELSE Apply(GraphAfter(k - 1), Batches[k])

\* The committed graphs: the only graphs the fabric may show at rest.
CommittedGraphs == {GraphAfter(k) : k \in 0..NB}

\* The p2p slot rule: no two active links share (from, cls) for cls # "bus".
SlotOK(G) ==
    \A l1, l2 \in G :
        (l1 # l2 /\ l1.cls # "bus" /\ l1.from = l2.from) => l1.cls # l2.cls

OwnedBy(G, p) == {l \in G : Owner[l.from] = p}

(***************************************************************************)
(* What the planner (rtt_controller.graph / planner) guarantees. TLC       *)
(* checks these assumptions on the constants before it explores anything.  *)
(***************************************************************************)
ASSUME PlannerContract ==
    /\ NB >= 1
    /\ GraphAfter(NB) = Desired
    /\ \A G \in CommittedGraphs : SlotOK(G)
    /\ \A k \in BatchIds : \A s \in Batches[k] :
          /\ s.op = "add" => s.link \notin GraphAfter(k - 1)
          /\ s.op = "remove" => s.link \in GraphAfter(k - 1)

ASSUME MaxCrashes \in Nat /\ MaxCoordCrashes \in 0..MaxCrashes

-----------------------------------------------------------------------------
(***************************************************************************)
(* Transactions. A transaction runs batch `batch` forward ("fwd") or its   *)
(* inverse ("inv"), under coordinator incarnation `epoch`. A coordinator   *)
(* that restarts never reuses an id: a retry after a crash is a new        *)
(* transaction, so presumed abort of the old one is safe.                  *)
(***************************************************************************)
Epochs == 0..MaxCoordCrashes
Txns == [epoch : Epochs, batch : BatchIds, dir : {"fwd", "inv"}]
NoTxn == [epoch |-> 0, batch |-> 0, dir |-> "none"]

\* Ids increase over a plan: fwd 1..NB, then inv NB..1, then the next epoch.
Pos(t) == IF t.dir = "fwd" THEN t.batch ELSE 2 * NB + 1 - t.batch
Rank(t) == t.epoch * (2 * NB + 1) + Pos(t)

StepsOf(t) ==
    IF t.dir = "fwd" THEN Batches[t.batch]
                     ELSE {Invert(s) : s \in Batches[t.batch]}

\* The part of transaction t that participant p applies.
Slice(t, p) == {s \in StepsOf(t) : Owner[s.link.from] = p}
Adds(t, p) == LinksOf(Slice(t, p), "add")
Removes(t, p) == LinksOf(Slice(t, p), "remove")

\* The participants of t: the nodes whose route table t changes. A node with
\* nothing to change takes no part (and cannot block or NACK the batch).
TxnParts(t) == {p \in Participants : Slice(t, p) # {}}

\* Participant log states. "nacked" is a unilateral refusal at PREPARE;
\* "aborted" follows a logged ABORT decision; "presumed-aborted" follows an
\* answer of "no decision" from the coordinator.
PStates == {"none", "prepared", "committed", "aborted", "presumed-aborted",
            "nacked"}

WalKinds == {"begin", "commit", "abort", "verify-failed", "promoted",
             "rolled-back"}

-----------------------------------------------------------------------------
VARIABLES
    \* Coordinator. wal and cEpoch are durable; the rest is lost on crash.
    cUp,        \* is the coordinator process running?
    cEpoch,     \* incarnation number, bumped durably at every restart
    wal,        \* the decision WAL: <<[seq, kind, txn]>>, force-logged
    cSeq,       \* next-sequence counter kept in memory (rebuilt on recovery)
    cTxn,       \* the transaction being run, or NoTxn
    \* Participants. pLog and table are durable; the rest is lost on crash.
    pUp,        \* pUp[p]: is participant p running?
    pLog,       \* pLog[p][t] \in PStates: p's durable PREPARED/COMMIT log
    pPending,   \* txn ACKed but not yet logged (only with BugAckBeforeLog)
    table,      \* table[p]: the committed route table of p (its links)
    lanes,      \* lanes[p]: links p holds a lane for (reserved or active)
    \* Network. Votes and decisions are never lost; a resend is the same message.
    prepares,   \* the newest PREPARE (one txn), or {} after a coordinator crash
    votes,      \* set of [txn, from, ok]: ACK (ok) or NACK (~ok)
    decisions,  \* set of [txn, dec]: COMMIT/ABORT broadcast
    \* Environment.
    crashes     \* crashes so far (bounded by MaxCrashes)

coordVars == <<cUp, cEpoch, wal, cSeq, cTxn>>
partVars == <<pUp, pLog, pPending, table, lanes>>
netVars == <<prepares, votes, decisions>>
vars == <<coordVars, partVars, netVars, crashes>>

-----------------------------------------------------------------------------
(***************************************************************************)
(* Derived views.                                                          *)
(***************************************************************************)

\* The live graph: what the fabric routes now (committed tables, durable).
Live == UNION {table[p] : p \in Participants}

IsDecision(r) == r.kind \in {"commit", "abort"}
Logged(kind) == \E i \in DOMAIN wal : wal[i].kind = kind
LoggedDecision(t, kind) ==
    \E i \in DOMAIN wal : wal[i].kind = kind /\ wal[i].txn = t
HasDecision(t) == LoggedDecision(t, "commit") \/ LoggedDecision(t, "abort")
LastSeq == IF wal = <<>> THEN 0 ELSE wal[Len(wal)].seq

\* The plan's progress, as the coordinator reads it back from its WAL.
Planned == Logged("begin")
Promoted == Logged("promoted")
RolledBack == Logged("rolled-back")
PlanEnded == Promoted \/ RolledBack
CommittedBatches(dir) ==
    {b \in BatchIds : \E i \in DOMAIN wal :
        wal[i].kind = "commit" /\ wal[i].txn.dir = dir /\ wal[i].txn.batch = b}
FwdDone == CommittedBatches("fwd")
Undone == CommittedBatches("inv")
RollingBack ==
    \/ Logged("verify-failed")
    \/ \E i \in DOMAIN wal : wal[i].kind = "abort" /\ wal[i].txn.dir = "fwd"

\* Batches whose inverse is still to be applied. The bug drops the newest.
ToUndo ==
    (FwdDone \ Undone)
      \ (IF BugForgetInverse /\ FwdDone # {} THEN {Max(FwdDone)} ELSE {})

AllYes(t) == \A p \in TxnParts(t) : [txn |-> t, from |-> p, ok |-> TRUE] \in votes
SomeNo(t) == \E p \in TxnParts(t) : [txn |-> t, from |-> p, ok |-> FALSE] \in votes
Announced(t, dec) == [txn |-> t, dec |-> dec] \in decisions

\* Presumed abort: a COMMIT must be acknowledged by every participant before
\* the coordinator forgets it and moves on; an ABORT needs no ack. The ack
\* is sent after the participant has logged the commit, and messages are not
\* lost, so "acked" is modelled as "the participant's log says committed".
CommitsAcked ==
    \A i \in DOMAIN wal :
        wal[i].kind = "commit" =>
            \A p \in TxnParts(wal[i].txn) : pLog[p][wal[i].txn] = "committed"

\* The scan behind Verify: every node answers, and every commit is applied.
ScanComplete == CommitsAcked /\ \A p \in Participants : pUp[p]

InDoubt(p) == {t \in Txns : pLog[p][t] = "prepared"}
InFlight(p) == InDoubt(p) \cup (IF pPending[p] = NoTxn THEN {} ELSE {pPending[p]})

-----------------------------------------------------------------------------
Init ==
    /\ cUp = TRUE
    /\ cEpoch = 0
    /\ wal = <<>>
    /\ cSeq = 0
    /\ cTxn = NoTxn
    /\ pUp = [p \in Participants |-> TRUE]
    /\ pLog = [p \in Participants |-> [t \in Txns |-> "none"]]
    /\ pPending = [p \in Participants |-> NoTxn]
    /\ table = [p \in Participants |-> OwnedBy(Old, p)]
    /\ lanes = [p \in Participants |-> OwnedBy(Old, p)]
    /\ prepares = {}
    /\ votes = {}
    /\ decisions = {}
    /\ crashes = 0

\* Force-log one WAL record. The record is durable once this step is taken.
Log(kind, t) ==
    /\ wal' = Append(wal, [seq |-> cSeq + 1, kind |-> kind, txn |-> t])
    /\ cSeq' = cSeq + 1

-----------------------------------------------------------------------------
(***************************************************************************)
(* Coordinator actions (issue 7).                                          *)
(***************************************************************************)

\* Scan the fabric and accept the plan only if the observed graph is the
\* plan's base graph (the plan carries the base graph hash). Otherwise the
\* plan is stale and the controller re-plans; with a fixed Desired and no
\* concurrent writer that branch is not reachable here.
ScanAndPlan ==
    /\ cUp
    /\ ~Planned
    /\ Live = Old
    /\ Log("begin", NoTxn)
    /\ UNCHANGED <<cUp, cEpoch, cTxn, partVars, netVars, crashes>>

\* Phase 1 of the next forward batch: broadcast PREPARE. The previous
\* transaction is decided (and, if committed, acked), so only the newest
\* PREPARE is kept in flight.
CoordPrepare ==
    /\ cUp
    /\ cTxn = NoTxn
    /\ Planned /\ ~PlanEnded /\ ~RollingBack
    /\ FwdDone # BatchIds
    /\ CommitsAcked
    /\ LET t == [epoch |-> cEpoch, batch |-> Min(BatchIds \ FwdDone), dir |-> "fwd"]
       IN  /\ cTxn' = t
           /\ prepares' = {t}
    /\ UNCHANGED <<cUp, cEpoch, wal, cSeq, partVars, votes, decisions, crashes>>

\* Every participant ACKed: force-log COMMIT. Only after this may anyone
\* hear of it (see CoordSendCommit). With BugAnnounceBeforeLog the order is
\* reversed and logging is the last step of the transaction.
CoordLogCommit ==
    /\ cUp
    /\ cTxn # NoTxn
    /\ ~HasDecision(cTxn)
    /\ AllYes(cTxn)
    /\ Log("commit", cTxn)
    /\ IF BugAnnounceBeforeLog
          THEN Announced(cTxn, "commit") /\ cTxn' = NoTxn
          ELSE UNCHANGED cTxn
    /\ UNCHANGED <<cUp, cEpoch, partVars, netVars, crashes>>

\* Phase 2: broadcast the logged COMMIT; the transaction is then done.
CoordSendCommit ==
    /\ cUp
    /\ cTxn # NoTxn
    /\ ~Announced(cTxn, "commit")
    /\ IF BugAnnounceBeforeLog
          THEN AllYes(cTxn) /\ ~HasDecision(cTxn) /\ UNCHANGED cTxn
          ELSE LoggedDecision(cTxn, "commit") /\ cTxn' = NoTxn
    /\ decisions' = decisions \cup {[txn |-> cTxn, dec |-> "commit"]}
    /\ UNCHANGED <<cUp, cEpoch, wal, cSeq, partVars, prepares, votes, crashes>>

\* A NACK: force-log ABORT, then broadcast it, and the transaction is done.
\* One step, because a crash between the two is already covered: recovery
\* resends every logged decision, and an unlogged abort is presumed anyway.
\* Logging the abort is not needed for presumed abort itself; it makes "this
\* plan is rolling back" durable, so a restarted coordinator keeps rolling
\* back instead of retrying the batch.
CoordAbort ==
    /\ cUp
    /\ cTxn # NoTxn
    /\ ~HasDecision(cTxn)
    /\ SomeNo(cTxn)
    /\ Log("abort", cTxn)
    /\ decisions' = decisions \cup {[txn |-> cTxn, dec |-> "abort"]}
    /\ cTxn' = NoTxn
    /\ UNCHANGED <<cUp, cEpoch, partVars, prepares, votes, crashes>>

\* All batches committed and applied everywhere: compare observed with
\* desired (by hash in the implementation). Equal promotes the plan;
\* different starts the rollback.
Verify ==
    /\ cUp
    /\ cTxn = NoTxn
    /\ Planned /\ ~PlanEnded /\ ~RollingBack
    /\ FwdDone = BatchIds
    /\ ScanComplete
    /\ Log(IF Live = Desired THEN "promoted" ELSE "verify-failed", NoTxn)
    /\ UNCHANGED <<cUp, cEpoch, cTxn, partVars, netVars, crashes>>

\* Rolling back: run the inverse of the newest committed batch not yet
\* undone, as its own 2PC transaction. Reverse order matters: batch k+1 was
\* planned against the graph batch k produced.
Rollback ==
    /\ cUp
    /\ cTxn = NoTxn
    /\ Planned /\ ~PlanEnded /\ RollingBack
    /\ ToUndo # {}
    /\ CommitsAcked
    /\ LET t == [epoch |-> cEpoch, batch |-> Max(ToUndo), dir |-> "inv"]
       IN  /\ cTxn' = t
           /\ prepares' = {t}
    /\ UNCHANGED <<cUp, cEpoch, wal, cSeq, partVars, votes, decisions, crashes>>

\* Every inverse is committed and applied everywhere: the plan has ended.
RollbackDone ==
    /\ cUp
    /\ cTxn = NoTxn
    /\ Planned /\ ~PlanEnded /\ RollingBack
    /\ ToUndo = {}
    /\ ScanComplete
    /\ Log("rolled-back", NoTxn)
    /\ UNCHANGED <<cUp, cEpoch, cTxn, partVars, netVars, crashes>>

\* A crash loses everything but the WAL and the epoch. PREPARE requests not
\* yet handled die with the coordinator's sessions; a participant that did
\* handle one is in doubt and resolves it by inquiry.
CoordCrash ==
    /\ cUp
    /\ crashes < MaxCrashes
    /\ cEpoch < MaxCoordCrashes     \* the epoch counts the restarts so far
    /\ cUp' = FALSE
    /\ cTxn' = NoTxn
    /\ cSeq' = 0
    /\ prepares' = {}
    /\ crashes' = crashes + 1
    /\ UNCHANGED <<cEpoch, wal, partVars, votes, decisions>>

\* Restart under a new epoch, rebuild the sequence counter from the WAL and
\* resend every logged decision (a decision may have been logged but not
\* sent). The plan position is read back from the WAL (FwdDone, Undone,
\* RollingBack), so the next CoordPrepare retries an undecided batch under
\* a new id; the old id is presumed aborted.
CoordRecover ==
    /\ ~cUp
    /\ cUp' = TRUE
    /\ cEpoch' = cEpoch + 1
    /\ cSeq' = IF BugSeqResetOnRecover THEN 0 ELSE LastSeq
    /\ decisions' = decisions \cup
          {[txn |-> wal[i].txn, dec |-> wal[i].kind] : i \in {j \in DOMAIN wal : IsDecision(wal[j])}}
    /\ UNCHANGED <<wal, cTxn, partVars, prepares, votes, crashes>>

-----------------------------------------------------------------------------
(***************************************************************************)
(* Participant actions (issue 4).                                          *)
(***************************************************************************)

\* p may vote on t: it is up, has no other transaction in flight (it must
\* resolve an in-doubt one first, since t was planned on top of it), has
\* not seen t, and t is newer than every transaction it has seen (a late
\* PREPARE from an older coordinator epoch is ignored).
CanVote(p, t) ==
    /\ p \in TxnParts(t)
    /\ pUp[p]
    /\ InFlight(p) = {}
    /\ pLog[p][t] = "none"
    /\ \A u \in Txns : pLog[p][u] # "none" => Rank(u) < Rank(t)

\* Reserve lanes for the links t adds, force-log PREPARED, then ACK. The
\* slot rule is checked locally: a slice that would break it is refused.
\* BugAckBeforeLog ACKs first and leaves the PREPARED write for later.
PartPrepareAck(p) ==
    \E t \in prepares :
        /\ CanVote(p, t)
        /\ SlotOK(Apply(table[p], Slice(t, p)))
        /\ lanes' = [lanes EXCEPT ![p] = @ \cup Adds(t, p)]
        /\ votes' = votes \cup {[txn |-> t, from |-> p, ok |-> TRUE]}
        /\ IF BugAckBeforeLog
              THEN pPending' = [pPending EXCEPT ![p] = t] /\ UNCHANGED pLog
              ELSE pLog' = [pLog EXCEPT ![p][t] = "prepared"] /\ UNCHANGED pPending
        /\ UNCHANGED <<coordVars, pUp, table, prepares, decisions, crashes>>

\* Only reachable with BugAckBeforeLog: the late PREPARED write.
PartLogPrepared(p) ==
    /\ pUp[p]
    /\ pPending[p] # NoTxn
    /\ pLog' = [pLog EXCEPT ![p][pPending[p]] = "prepared"]
    /\ pPending' = [pPending EXCEPT ![p] = NoTxn]
    /\ UNCHANGED <<coordVars, pUp, table, lanes, netVars, crashes>>

\* Refuse a forward batch (no capacity, policy, a broken slot rule, ...).
\* An inverse batch is never refused: it restores routes the fabric served
\* a moment ago, and the fabric must keep their resources until the plan
\* ends. This is a requirement on issue 4, not a property of the model.
PartNack(p) ==
    \E t \in prepares :
        /\ CanVote(p, t)
        /\ t.dir = "fwd"
        /\ pLog' = [pLog EXCEPT ![p][t] = "nacked"]
        /\ votes' = votes \cup {[txn |-> t, from |-> p, ok |-> FALSE]}
        /\ UNCHANGED <<coordVars, pUp, pPending, table, lanes, prepares, decisions, crashes>>

\* Apply a committed slice: flip the route table (one epoch flip on the
\* node), release the lanes of removed links; added links keep the lanes
\* reserved at PREPARE.
DoCommit(p, t) ==
    /\ pLog' = [pLog EXCEPT ![p][t] = "committed"]
    /\ table' = [table EXCEPT ![p] = Apply(@, Slice(t, p))]
    /\ lanes' = [lanes EXCEPT ![p] = (@ \ Removes(t, p)) \cup Adds(t, p)]

\* Abort a prepared slice: release the lanes reserved for it.
DoAbort(p, t, how) ==
    /\ pLog' = [pLog EXCEPT ![p][t] = how]
    /\ lanes' = IF BugLeakLaneOnAbort THEN lanes
                ELSE [lanes EXCEPT ![p] = @ \ Adds(t, p)]
    /\ UNCHANGED table

PartCommit(p) ==
    \E t \in InDoubt(p) :
        /\ pUp[p]
        /\ Announced(t, "commit")
        /\ DoCommit(p, t)
        /\ UNCHANGED <<coordVars, pUp, pPending, netVars, crashes>>

PartAbort(p) ==
    \E t \in InDoubt(p) :
        /\ pUp[p]
        /\ Announced(t, "abort")
        /\ DoAbort(p, t, "aborted")
        /\ UNCHANGED <<coordVars, pUp, pPending, netVars, crashes>>

\* In-doubt resolution: p holds a PREPARED record and asks the coordinator
\* (after a restart, or after a timeout). The coordinator answers from its
\* WAL. No logged decision and not the transaction it is running now means
\* abort (presumed abort). For the running transaction it does not answer
\* yet. BugPresumeCommit answers "commit" instead.
PartResolveInDoubt(p) ==
    /\ ~BugNoInquiry
    /\ pUp[p]
    /\ cUp
    /\ \E t \in InDoubt(p) :
          /\ \/ LoggedDecision(t, "commit") /\ DoCommit(p, t)
             \/ LoggedDecision(t, "abort") /\ DoAbort(p, t, "aborted")
             \/ /\ ~HasDecision(t)
                /\ t # cTxn
                /\ IF BugPresumeCommit THEN DoCommit(p, t)
                                       ELSE DoAbort(p, t, "presumed-aborted")
          /\ UNCHANGED <<coordVars, pUp, pPending, netVars, crashes>>

\* A crash loses the lanes (they are process resources) and anything not
\* yet logged; the PREPARED/COMMIT log and the route table survive.
PartCrash(p) ==
    /\ pUp[p]
    /\ crashes < MaxCrashes
    /\ pUp' = [pUp EXCEPT ![p] = FALSE]
    /\ lanes' = [lanes EXCEPT ![p] = {}]
    /\ pPending' = [pPending EXCEPT ![p] = NoTxn]
    /\ crashes' = crashes + 1
    /\ UNCHANGED <<coordVars, pLog, table, netVars>>

\* Replay the log: rebuild the lanes of the committed table and re-reserve
\* those of every PREPARED record. The node then serves the last committed
\* graph and is in doubt about the prepared transactions.
PartRecover(p) ==
    /\ ~pUp[p]
    /\ pUp' = [pUp EXCEPT ![p] = TRUE]
    /\ lanes' = [lanes EXCEPT ![p] =
                    table[p] \cup UNION {Adds(t, p) : t \in InDoubt(p)}]
    /\ UNCHANGED <<coordVars, pLog, pPending, table, netVars, crashes>>

-----------------------------------------------------------------------------
CoordNext ==
    \/ ScanAndPlan \/ CoordPrepare
    \/ CoordLogCommit \/ CoordSendCommit \/ CoordAbort
    \/ Verify \/ Rollback \/ RollbackDone
    \/ CoordCrash \/ CoordRecover

PartNext(p) ==
    \/ PartPrepareAck(p) \/ PartLogPrepared(p) \/ PartNack(p)
    \/ PartCommit(p) \/ PartAbort(p) \/ PartResolveInDoubt(p)
    \/ PartCrash(p) \/ PartRecover(p)

Next == CoordNext \/ \E p \in Participants : PartNext(p)

\* Weak fairness on every protocol step, none on crashes or NACKs: crashes
\* are bounded by MaxCrashes and a NACK is the environment's choice.
Fairness ==
    /\ WF_vars(ScanAndPlan) /\ WF_vars(CoordPrepare)
    /\ WF_vars(CoordLogCommit) /\ WF_vars(CoordSendCommit)
    /\ WF_vars(CoordAbort)
    /\ WF_vars(Verify) /\ WF_vars(Rollback) /\ WF_vars(RollbackDone)
    /\ WF_vars(CoordRecover)
    /\ \A p \in Participants :
          /\ WF_vars(PartPrepareAck(p)) /\ WF_vars(PartLogPrepared(p))
          /\ WF_vars(PartCommit(p)) /\ WF_vars(PartAbort(p))
          /\ WF_vars(PartResolveInDoubt(p)) /\ WF_vars(PartRecover(p))

Spec == Init /\ [][Next]_vars /\ Fairness

-----------------------------------------------------------------------------
(***************************************************************************)
(* Safety invariants. spec/invariants.md lists them with the code that     *)
(* checks each one at runtime or in tests.                                 *)
(***************************************************************************)
TypeOK ==
    /\ cUp \in BOOLEAN
    /\ cEpoch \in Epochs
    /\ cTxn \in Txns \cup {NoTxn}
    /\ \A i \in DOMAIN wal :
          /\ wal[i].kind \in WalKinds
          /\ wal[i].txn \in Txns \cup {NoTxn}
    /\ pUp \in [Participants -> BOOLEAN]
    /\ pLog \in [Participants -> [Txns -> PStates]]
    /\ pPending \in [Participants -> Txns \cup {NoTxn}]
    /\ prepares \subseteq Txns
    /\ crashes \in 0..MaxCrashes

\* No participant commits a transaction that another one aborted.
Atomic ==
    \A t \in Txns : \A p, q \in Participants :
        pLog[p][t] = "committed" =>
            pLog[q][t] \notin {"aborted", "presumed-aborted", "nacked"}

\* A decision takes effect only once the coordinator's WAL holds it: a
\* participant commits (or aborts by decision) only a logged decision.
DecisionLoggedBeforeEffect ==
    \A p \in Participants : \A t \in Txns :
        /\ pLog[p][t] = "committed" => LoggedDecision(t, "commit")
        /\ pLog[p][t] = "aborted" => LoggedDecision(t, "abort")

\* Presumed abort is never contradicted by a later commit.
PresumedAbortSafe ==
    \A p \in Participants : \A t \in Txns :
        pLog[p][t] = "presumed-aborted" => ~LoggedDecision(t, "commit")

\* At most one decision per transaction.
SingleDecision ==
    \A i, j \in DOMAIN wal :
        (i # j /\ IsDecision(wal[i]) /\ IsDecision(wal[j])) => wal[i].txn # wal[j].txn

\* The WAL sequence strictly increases.
WalSeqIncreasing ==
    \A i \in 1..(Len(wal) - 1) : wal[i].seq < wal[i + 1].seq

\* Between transactions (every node has applied the same commits) the live
\* graph is one of the committed graphs, never a mix of batches.
Quiescent ==
    \A t \in Txns :
        (\E p \in Participants : pLog[p][t] = "committed") =>
            \A q \in TxnParts(t) : pLog[q][t] = "committed"
LiveIsCommittedGraph == Quiescent => Live \in CommittedGraphs

\* Once the plan has ended, the live graph is the new one (promoted) or the
\* old one (rolled back).
PlanEndIsOldOrNew ==
    /\ Promoted => Live = Desired
    /\ RolledBack => Live = Old

\* Every lane a participant holds backs a committed route or a transaction
\* that is in flight at that participant (prepared and undecided there).
NoOrphanLane ==
    \A p \in Participants :
        lanes[p] \subseteq table[p] \cup UNION {Adds(t, p) : t \in InFlight(p)}

\* There is never more than one active link for (from, class # bus).
NoDuplicateActiveLink == SlotOK(Live)

-----------------------------------------------------------------------------
(***************************************************************************)
(* Liveness. Desired is a constant (it stays fixed) and crashes stop after *)
(* MaxCrashes. Under weak fairness of every protocol step the plan ends,   *)
(* no participant stays in doubt, and from then on the live graph is the   *)
(* desired graph (promoted) or the old graph (rolled back), for ever.      *)
(***************************************************************************)
Settled ==
    /\ (Promoted /\ Live = Desired) \/ (RolledBack /\ Live = Old)
    /\ \A p \in Participants : InDoubt(p) = {}

EventuallySettled == <>[]Settled

\* The brief's shape of the same property; implied by EventuallySettled.
Converges == <>[](Live = Desired \/ Live = Old)
=============================================================================
