//! Routing of transaction steps (MULTI/EXEC/DISCARD/WATCH/UNWATCH) and the
//! proxy's own `SHARDIS.*` commands, with the legacy admin gate.

use super::{Admin, Ctx, LockPlan, Plan, TxStep, View};
use crate::command::{ProxyCommand, TxCommand};
use crate::error::{ErrorKind, ReplyError};
use crate::lock::classify;

/// Whether the legacy admin gate closes admin commands to this client: an
/// `admin_password` (or users) is configured and the client is the legacy
/// default user without SHARDIS.ADMIN.
pub(super) fn gated(view: &View<'_>, ctx: Ctx<'_>) -> bool {
    (view.config.admin_password.is_some() || !view.config.users.is_empty()) && !ctx.admin
}

pub(super) fn proxy_in_multi() -> ReplyError {
    ReplyError::err("shardis: SHARDIS.* commands cannot be used inside MULTI")
}

pub(super) fn transaction_step(step: TxCommand, ctx: Ctx) -> Plan {
    match (step, ctx.in_tx) {
        (TxCommand::Multi, false) => Plan::Tx(TxStep::Multi),
        (TxCommand::Multi, true) => Plan::Error(ReplyError::err("MULTI calls can not be nested")),
        (TxCommand::Exec, true) => Plan::Tx(TxStep::Exec),
        (TxCommand::Exec, false) => Plan::Error(ReplyError::err("EXEC without MULTI")),
        (TxCommand::Discard, true) => Plan::Tx(TxStep::Discard),
        (TxCommand::Discard, false) => Plan::Error(ReplyError::err("DISCARD without MULTI")),
        (TxCommand::Watch, true) => Plan::Error(ReplyError::err("WATCH inside MULTI is not allowed")),
        // Routed as a WATCH before this (outside MULTI).
        (TxCommand::Watch, false) => Plan::Error(ReplyError::err("shardis: WATCH not routed")),
        // Inside MULTI, UNWATCH is queued before this.
        (TxCommand::Unwatch, _) => Plan::Tx(TxStep::Unwatch),
    }
}

/// `SHARDIS.*` (arity already checked by the lookup).
pub(super) fn proxy(view: &View<'_>, ctx: Ctx, cmd: ProxyCommand, args: &[&[u8]]) -> Plan {
    let admin_password = view.config.admin_password.as_deref();
    match cmd {
        ProxyCommand::Admin => match admin_password {
            None if !view.config.users.is_empty() => Plan::Error(ReplyError::err(
                "shardis: no admin_password is configured; log in as a user allowed the @admin commands",
            )),
            None => Plan::Error(ReplyError::err(
                "shardis: no admin_password is configured; admin commands are open to every client",
            )),
            Some(pw)
                if args
                    .get(1)
                    .is_some_and(|given| crate::acl::same_secret(pw.as_bytes(), given)) =>
            {
                Plan::Admin(Admin::Login)
            }
            Some(_) => Plan::Admin(Admin::BadPassword),
        },
        ProxyCommand::Reload => {
            if gated(view, ctx) {
                return Plan::Error(ReplyError::new(
                    ErrorKind::NoPerm,
                    "shardis: SHARDIS.RELOAD needs SHARDIS.ADMIN <admin_password> first",
                ));
            }
            match args {
                [_] => Plan::Admin(Admin::Reload { force: false }),
                [_, f] if f.eq_ignore_ascii_case(b"force") => Plan::Admin(Admin::Reload { force: true }),
                _ => Plan::Error(ReplyError::err("syntax error: SHARDIS.RELOAD [FORCE]")),
            }
        }
        ProxyCommand::Lock | ProxyCommand::Fence => match classify::classify_proxy_command(args[0], args, view.locks) {
            Ok(op) => Plan::Lock(Box::new(LockPlan { op, script: None })),
            Err(e) => Plan::Error(e),
        },
    }
}
