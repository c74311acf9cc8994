------------------------------- MODULE MCRTT -------------------------------
(***************************************************************************)
(* Model values for RTT.tla, used by every MC*.cfg.                        *)
(*                                                                         *)
(* Three nodes n1, n2, n3 host the symbols a, b, c. The CI plan has two    *)
(* batches and touches every node:                                         *)
(*   Old     = { a -p2p-> b,  b -p2p-> c,  c -bus-> a }                    *)
(*   batch 1 = move a's p2p link from b to c; add c -bus-> b               *)
(*             (c then has two bus links, which the slot rule allows)      *)
(*   batch 2 = move b's p2p link from c to a; drop c -bus-> a              *)
(*   Desired = { a -p2p-> c,  c -bus-> b,  b -p2p-> a }                    *)
(* A move is remove + add in the same batch, so no committed graph has two *)
(* p2p links from one symbol.                                              *)
(*                                                                         *)
(* The long run adds a third batch (a new symbol route on n1 and n2).      *)
(***************************************************************************)
EXTENDS RTT

MCParticipants == {"n1", "n2", "n3"}

MCOwner == [s \in {"a", "b", "c"} |->
              CASE s = "a" -> "n1"
                [] s = "b" -> "n2"
                [] s = "c" -> "n3"]

Link(f, c, t) == [from |-> f, cls |-> c, to |-> t]
Add(l) == [op |-> "add", link |-> l]
Del(l) == [op |-> "remove", link |-> l]

MCOld == {Link("a", "p2p", "b"), Link("b", "p2p", "c"), Link("c", "bus", "a")}

MCBatches ==
    << {Del(Link("a", "p2p", "b")), Add(Link("a", "p2p", "c")), Add(Link("c", "bus", "b"))},
       {Del(Link("b", "p2p", "c")), Add(Link("b", "p2p", "a")), Del(Link("c", "bus", "a"))} >>

MCDesired == {Link("a", "p2p", "c"), Link("c", "bus", "b"), Link("b", "p2p", "a")}

\* Long run: a third batch moves a's p2p link on to b and adds b -bus-> c.
MCBatchesLong ==
    MCBatches \o << {Del(Link("a", "p2p", "c")), Add(Link("a", "p2p", "b")), Add(Link("b", "bus", "c"))} >>

MCDesiredLong ==
    {Link("a", "p2p", "b"), Link("c", "bus", "b"), Link("b", "p2p", "a"), Link("b", "bus", "c")}
=============================================================================
