//! The per-thread cache of command routes: [`route`] answers as
//! [`super::route_of`] does, remembering the answer per command so that its
//! long match on the command's name runs once per command and thread, not
//! per request.

use super::Route;
use super::spec::CommandSpec;

/// Slots of the per-thread route cache (a power of two).
const ROUTE_CACHE: usize = 16;

thread_local! {
    /// The routes of recently looked-up commands, by the address of their
    /// spec (direct-mapped; 0 is no spec).
    static ROUTES: [std::cell::Cell<(usize, Route)>; ROUTE_CACHE] =
        const { [const { std::cell::Cell::new((0, Route::Keyed)) }; ROUTE_CACHE] };
}

/// [`super::route_of`], remembered per command: its long match on the name (string
/// comparisons, 50 instructions per GET in bench/callgrind.sh) runs once per
/// command and thread, not per request. The commands whose route depends on
/// their arguments are not remembered.
pub(super) fn route(spec: &'static CommandSpec, args: &[&[u8]]) -> Route {
    if matches!(spec.name, "copy" | "xread" | "xreadgroup") {
        return super::route_of(spec, args);
    }
    let addr = spec as *const CommandSpec as usize;
    let slot = (addr / std::mem::size_of::<CommandSpec>()) % ROUTE_CACHE;
    ROUTES.with(|cache| {
        let (seen, route) = cache[slot].get();
        if seen == addr {
            return route;
        }
        let route = super::route_of(spec, args);
        cache[slot].set((addr, route));
        route
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup_route(cmd: &str) -> Route {
        let args: Vec<&[u8]> = cmd.split(' ').map(|s| s.as_bytes()).collect();
        super::super::lookup(&args).map(|l| l.route).expect("a known command")
    }

    #[test]
    fn the_route_cache_answers_as_route_of_for_every_command() {
        // Twice over every command and subcommand, so each is answered from
        // the cache too (and slots shared by several commands are retaken).
        for _ in 0..2 {
            for top in super::super::table::COMMANDS {
                for c in std::iter::once(top).chain(top.subcommands) {
                    assert_eq!(route(c, &[]), super::super::route_of(c, &[]), "{}", c.name);
                }
            }
        }
        // Arguments that change a route are never taken from the cache.
        assert_eq!(lookup_route("XREAD COUNT 1 STREAMS s 0"), Route::Keyed);
        assert_ne!(lookup_route("XREAD BLOCK 0 STREAMS s 0"), Route::Keyed);
        assert_eq!(lookup_route("COPY a b"), Route::Keyed);
        assert_ne!(lookup_route("COPY a b DB 1"), Route::Keyed);
    }
}
