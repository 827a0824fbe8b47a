use super::*;

fn user(name: &str, extra: &str) -> UserConfig {
    let mut c: UserConfig = toml::from_str(&format!("name = \"{name}\"\n{extra}")).unwrap();
    c.name = name.into();
    c
}

fn lookup(line: &str) -> (Vec<&[u8]>, crate::command::Lookup) {
    let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
    let l = crate::command::lookup(&args).unwrap();
    (args, l)
}

fn run(u: &User, line: &str) -> Result<(), String> {
    let (args, l) = lookup(line);
    check(&u.perms, l.spec, l.id(), &args, &mut Vec::new()).map_err(|e| e.to_string())
}

#[test]
fn roles_and_checks() {
    let acl = Acl::build(
        &[
            user("ro", "password = \"p\"\nrole = \"read-only\""),
            user("rw", "password = \"p\"\nrole = \"read-write\""),
            user(
                "app",
                "password = \"p\"\ncommands = \"+@all\"\nkeys = [\"~app:*\", \"%R~shared:*\"]",
            ),
        ],
        None,
        false,
    )
    .unwrap();
    let ro = acl.user(b"ro").unwrap();
    assert!(run(ro, "GET a").is_ok());
    assert_eq!(
        run(ro, "SET a b").unwrap_err(),
        "NOPERM this user has no permissions to run the 'set' command"
    );
    assert!(run(ro, "AUTH x y").is_ok(), "AUTH is everyone's");
    let rw = acl.user(b"rw").unwrap();
    assert!(run(rw, "SET a b").is_ok());
    assert!(run(rw, "CONFIG SET maxmemory 1").unwrap_err().contains("'config|set'"));
    assert!(run(rw, "SHARDIS.RELOAD").is_err());
    let app = acl.user(b"app").unwrap();
    assert!(run(app, "SET app:1 v").is_ok());
    assert!(run(app, "GET shared:1").is_ok());
    assert_eq!(
        run(app, "SET shared:1 v").unwrap_err(),
        "NOPERM this user has no permissions to access one of the keys used as arguments"
    );
    assert!(run(app, "MGET app:1 other").is_err());
    assert!(run(app, "PING").is_ok());
}

#[test]
fn logins() {
    let acl = Acl::build(
        &[
            user("alice", "password = \"secret\""),
            user("bob", &format!("password_sha256 = \"{}\"", hex(&sha256(b"pw")))),
            user("off", "password = \"x\"\nenabled = false"),
        ],
        Some("legacy"),
        false,
    )
    .unwrap();
    assert!(acl.needs_login());
    assert_eq!(acl.login(Some(b"alice"), b"secret").unwrap().name, "alice");
    assert_eq!(acl.login(Some(b"bob"), b"pw").unwrap().name, "bob");
    assert_eq!(acl.login(None, b"legacy").unwrap().name, "default");
    assert_eq!(acl.login(Some(b"default"), b"legacy").unwrap().name, "default");
    for (u, p) in [
        (Some(&b"alice"[..]), &b"nope"[..]),
        (Some(b"off"), b"x"),
        (Some(b"ghost"), b"x"),
        (None, b"x"),
    ] {
        assert_eq!(
            acl.login(u, p).unwrap_err().to_string(),
            "WRONGPASS invalid username-password pair or user is disabled."
        );
    }
    assert!(acl.default_user().gated);
    let line = acl.user(b"alice").unwrap().acl_line();
    assert!(
        line.starts_with("user alice on #2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"),
        "{line}"
    );
    assert!(line.ends_with("resetkeys &* -@all"), "{line}");

    // No users and no password: everyone is default, nopass, unrestricted.
    let open = Acl::default();
    assert!(!open.needs_login() && open.default_user().unrestricted() && !open.default_user().gated);
    // Users and no password: default is off.
    let acl = Acl::build(&[user("a", "password = \"p\"")], None, false).unwrap();
    assert!(acl.needs_login());
    assert!(acl.login(Some(b"default"), b"").is_err());
}

#[test]
fn config_errors() {
    let e = |u: UserConfig, pw: Option<&str>| Acl::build(&[u], pw, false).unwrap_err();
    assert!(e(user("a", ""), None).1.contains("needs a `password`"));
    assert!(
        e(user("a", "password = \"p\"\npassword_sha256 = \"00\""), None)
            .1
            .contains("not both")
    );
    assert!(e(user("a", "password_sha256 = \"zz\""), None).1.contains("64 hex"));
    assert!(
        e(user("a", "password = \"p\"\nrole = \"god\""), None)
            .1
            .contains("unknown role")
    );
    assert!(
        e(user("a", "password = \"p\"\ncommands = \"+@nope\""), None)
            .1
            .contains("Unknown command or category")
    );
    assert!(e(user("default", "password = \"p\""), Some("x")).1.contains("keep one"));
    assert!(
        Acl::build(
            &[user("a", "password = \"p\""), user("a", "password = \"q\"")],
            None,
            false
        )
        .is_err()
    );
}
