//! Membership changes (etcd's Cluster service: add, promote, remove, list) with strict
//! reconfiguration (etcd's `--strict-reconfig-check`, always on): a membership change is
//! refused when the members reachable right now could not commit it.
//!
//! openraft changes voters through joint consensus: the joint configuration needs a quorum of
//! the old voters *and* a quorum of the new ones, and every later write needs a quorum of the
//! new voters. A change whose new quorum cannot be met by the members that answer now would
//! stall every write until the missing members appear (for a 1-node store, adding an
//! unreachable voter wedges it for good, across restarts). So the rule is pure arithmetic on
//! three sets, decided before anything is proposed. Learners never count towards a quorum, so
//! adding or removing one is always allowed.
//!
//! Deliberately stricter than etcd in one case: etcd lets a 1-member cluster add a second
//! voter that is not started yet (its "restore from backup" case); here the new member must
//! already answer on its peer URL (start it with `--initial-cluster-state existing` first, or
//! add it as a learner and promote it).

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use tokio::task::JoinSet;
use tonic::transport::ClientTlsConfig;

use crate::error::KvError;
use crate::network::peer_client;
use crate::node::KvNode;
use crate::proto::etcdserverpb as pb;
use crate::proto::peer::Empty;
use crate::types::{Member, member_id};

/// Voters needed for a quorum among `n` voters.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// Whether changing the voters from `old` to `new` keeps a quorum, given the members that
/// answer now. Both the old and the new configuration need a reachable quorum (joint
/// consensus commits with both).
pub fn check_voter_change(
    old: &BTreeSet<u64>,
    new: &BTreeSet<u64>,
    reachable: &BTreeSet<u64>,
) -> Result<(), KvError> {
    for voters in [old, new] {
        if voters.is_empty() {
            // Removing the last voter would leave nobody to commit anything.
            return Err(KvError::Unhealthy);
        }
        let up = voters.intersection(reachable).count();
        if up < quorum(voters.len()) {
            return Err(KvError::Unhealthy);
        }
    }
    Ok(())
}

impl KvNode {
    /// The members as etcd reports them.
    pub fn members(&self) -> Vec<pb::Member> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let attrs = self
            .shared
            .members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        membership
            .nodes()
            .map(|(id, node)| {
                let a = attrs.get(id);
                pb::Member {
                    id: *id,
                    name: a.map_or_else(|| node.name.clone(), |a| a.name.clone()),
                    peer_ur_ls: vec![node.peer_url.clone()],
                    client_ur_ls: a.map(|a| a.client_urls.clone()).unwrap_or_default(),
                    is_learner: !voters.contains(id),
                }
            })
            .collect()
    }

    /// Refuse a change of voters that the members answering now could not commit
    /// ([`membership::check_voter_change`]). `extra` is a member not in the configuration
    /// yet (the one being added), probed as well.
    async fn check_strict_reconfig(
        &self,
        change: impl FnOnce(&mut BTreeSet<u64>),
        extra: Option<(u64, String)>,
    ) -> Result<(), KvError> {
        if !self.is_leader() {
            // Only the leader changes membership (and knows who it reaches).
            return Err(KvError::NoLeader);
        }
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let old: BTreeSet<u64> = membership.voter_ids().collect();
        let mut new = old.clone();
        change(&mut new);
        let mut targets: Vec<(u64, String)> = old
            .union(&new)
            .filter(|id| **id != self.id)
            .filter_map(|id| membership.get_node(id).map(|n| (*id, n.peer_url.clone())))
            .collect();
        targets.extend(extra);
        let mut reachable = reachable(targets, self.peer_client_tls.as_ref()).await;
        reachable.insert(self.id);
        check_voter_change(&old, &new, &reachable).inspect_err(|_| {
            tracing::warn!(
                ?old,
                ?new,
                ?reachable,
                "refusing a membership change that would lose quorum"
            );
        })
    }

    /// etcd's MemberAdd: the member joins as a learner, and as a voter unless `learner`.
    /// A voter must be reachable enough to keep a quorum (strict reconfiguration); a learner
    /// never counts towards one, so it may be added while down.
    pub async fn member_add(&self, peer_url: &str, learner: bool) -> Result<pb::Member, KvError> {
        let id = member_id(peer_url);
        if self.members().iter().any(|m| m.id == id) {
            return Err(KvError::PeerUrlExists);
        }
        if !learner {
            self.check_strict_reconfig(
                |v| {
                    v.insert(id);
                },
                Some((id, peer_url.to_string())),
            )
            .await?;
        }
        let node = Member {
            name: String::new(),
            peer_url: peer_url.to_string(),
        };
        let deadline = self.deadline();
        let r = tokio::time::timeout_at(deadline, self.raft.add_learner(id, node, false)).await;
        membership_result(r)?;
        if !learner {
            let r = tokio::time::timeout_at(
                deadline,
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true),
            )
            .await;
            membership_result(r)?;
        }
        Ok(pb::Member {
            id,
            name: String::new(),
            peer_ur_ls: vec![peer_url.to_string()],
            client_ur_ls: Vec::new(),
            is_learner: learner,
        })
    }

    /// etcd's MemberPromote: only a learner that has caught up with the leader.
    pub async fn member_promote(&self, id: u64) -> Result<(), KvError> {
        let member = self
            .members()
            .into_iter()
            .find(|m| m.id == id)
            .ok_or(KvError::MemberNotFound)?;
        if !member.is_learner {
            return Err(KvError::MemberNotLearner);
        }
        let metrics = self.raft.metrics().borrow().clone();
        let matched = metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).copied().flatten())
            .map_or(0, |l| l.index);
        let last = metrics.last_log_index.unwrap_or(0);
        // etcd's rule: a learner is ready once it holds 90% of the leader's log.
        if (matched as f64) < (last as f64) * 0.9 {
            return Err(KvError::LearnerNotReady);
        }
        self.check_strict_reconfig(
            |v| {
                v.insert(id);
            },
            None,
        )
        .await?;
        let r = tokio::time::timeout_at(
            self.deadline(),
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false),
        )
        .await;
        membership_result(r)
    }

    /// etcd's MemberRemove.
    pub async fn member_remove(&self, id: u64) -> Result<(), KvError> {
        let member = self
            .members()
            .into_iter()
            .find(|m| m.id == id)
            .ok_or(KvError::MemberNotFound)?;
        let change = if member.is_learner {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            self.check_strict_reconfig(
                |v| {
                    v.remove(&id);
                },
                None,
            )
            .await?;
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        };
        let r =
            tokio::time::timeout_at(self.deadline(), self.raft.change_membership(change, false))
                .await;
        membership_result(r)
    }
}

/// How long a member has to answer a liveness probe before it counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The members among `targets` whose peer port answers a `Ping` now (probed in parallel).
async fn reachable(targets: Vec<(u64, String)>, tls: Option<&ClientTlsConfig>) -> BTreeSet<u64> {
    let mut probes = JoinSet::new();
    for (id, url) in targets {
        let tls = tls.cloned();
        probes.spawn(async move {
            let Ok(mut client) = peer_client(&url, PROBE_TIMEOUT, tls.as_ref()) else {
                return None;
            };
            let mut req = tonic::Request::new(Empty {});
            req.set_timeout(PROBE_TIMEOUT);
            match tokio::time::timeout(PROBE_TIMEOUT * 2, client.ping(req)).await {
                Ok(Ok(_)) => Some(id),
                _ => None,
            }
        });
    }
    let mut up = BTreeSet::new();
    while let Some(r) = probes.join_next().await {
        if let Ok(Some(id)) = r {
            up.insert(id);
        }
    }
    up
}

type MembershipWrite<T> =
    Result<Result<T, RaftError<u64, ClientWriteError<u64, Member>>>, tokio::time::error::Elapsed>;

fn membership_result<T>(r: MembershipWrite<T>) -> Result<(), KvError> {
    match r {
        Err(_) => Err(KvError::Timeout),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
            Err(KvError::NoLeader)
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => match e {
            ChangeMembershipError::LearnerNotFound(_) => Err(KvError::MemberNotFound),
            other => Err(KvError::Internal(other.to_string())),
        },
        Ok(Err(e)) => Err(KvError::Internal(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn adding_an_unreachable_voter_to_one_node_is_refused() {
        assert_eq!(
            check_voter_change(&set(&[1]), &set(&[1, 2]), &set(&[1])),
            Err(KvError::Unhealthy)
        );
        assert_eq!(
            check_voter_change(&set(&[1]), &set(&[1, 2]), &set(&[1, 2])),
            Ok(())
        );
    }

    #[test]
    fn three_healthy_voters_may_add_an_unreachable_fourth() {
        assert_eq!(
            check_voter_change(&set(&[1, 2, 3]), &set(&[1, 2, 3, 4]), &set(&[1, 2, 3])),
            Ok(())
        );
        // With one of the three down, 2 of 4 is not a quorum.
        assert_eq!(
            check_voter_change(&set(&[1, 2, 3]), &set(&[1, 2, 3, 4]), &set(&[1, 2])),
            Err(KvError::Unhealthy)
        );
    }

    #[test]
    fn removing_keeps_a_quorum_of_the_rest() {
        // 3 voters, 3 down to 2: removing a healthy one leaves 1 of 2 reachable.
        assert_eq!(
            check_voter_change(&set(&[1, 2, 3]), &set(&[1, 3]), &set(&[1, 2])),
            Err(KvError::Unhealthy)
        );
        // Removing the dead one is fine.
        assert_eq!(
            check_voter_change(&set(&[1, 2, 3]), &set(&[1, 2]), &set(&[1, 2])),
            Ok(())
        );
        assert_eq!(
            check_voter_change(&set(&[1]), &set(&[]), &set(&[1])),
            Err(KvError::Unhealthy)
        );
    }
}
