/**
 * The cluster store in memory, for tests: the rules over a
 * {@linkcode MemoryClusterState}, each change set applied at once, one
 * revision per peer change, a bounded replay history. Nothing survives it.
 */
import { type ClusterView, isEmpty, type Planned } from "./cluster_view.ts";
import { type EngineOptions, numbered, RuleStore } from "./_engine.ts";

/** A {@linkcode ClusterStore} that keeps everything in memory. */
export class MemoryClusterStore extends RuleStore<"sync"> {
  constructor(options: EngineOptions) {
    super(options);
  }

  protected transact<T>(_what: string, rule: (view: ClusterView) => Planned<T>): T {
    const { result, changes } = rule(this.state);
    if (isEmpty(changes)) return result;
    this.state.apply(changes);
    const events = numbered(changes.events, this.feed.revision);
    this.feed.publish(events);
    this.state.rev = this.feed.revision;
    return result;
  }
}
