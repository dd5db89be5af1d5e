use std::net::IpAddr;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn user_def(name: &str, password: &str, tags: Tags) -> UserDef {
    UserDef {
        name: name.to_string(),
        password_hash: password::hash(password),
        hashing_algorithm: password::ALGORITHM.to_string(),
        tags,
    }
}

fn perm(user: &str, vhost: &str, c: &str, w: &str, r: &str) -> PermissionDef {
    PermissionDef {
        user: user.into(),
        vhost: vhost.into(),
        configure: c.into(),
        write: w.into(),
        read: r.into(),
    }
}

#[test]
fn authenticate_right_wrong_unknown() {
    let users = Users::new(vec![]);
    users
        .put(user_def(
            "alice",
            "secret",
            Tags::Text("administrator, monitoring".into()),
        ))
        .unwrap();
    let u = users
        .authenticate("alice", "secret", ip("10.1.2.3"))
        .unwrap();
    assert_eq!(u.name, "alice");
    assert_eq!(u.tags, vec!["administrator", "monitoring"]);
    assert!(u.has_tag("monitoring"));
    assert!(!u.has_tag("management"));

    let wrong = users
        .authenticate("alice", "Secret", ip("127.0.0.1"))
        .unwrap_err();
    let unknown = users
        .authenticate("mallory", "secret", ip("127.0.0.1"))
        .unwrap_err();
    assert_eq!(wrong, AuthError::InvalidCredentials("alice".into()));
    assert_eq!(unknown, AuthError::InvalidCredentials("mallory".into()));
    // Same wording apart from the name the client sent.
    assert_eq!(
        wrong.to_string().replace("alice", "X"),
        unknown.to_string().replace("mallory", "X")
    );
}

#[test]
fn rabbitmq_hash_logs_in() {
    let users = Users::new(vec![]);
    users
        .put(UserDef {
            name: "alice".into(),
            password_hash: "nVb9NJc+nTjSOjihxV+OV/jrhrkjxR1or81wvwYcyGQFokiz".into(),
            hashing_algorithm: password::ALGORITHM.into(),
            tags: Tags::List(vec!["administrator".into()]),
        })
        .unwrap();
    assert!(users
        .authenticate("alice", "secret", ip("127.0.0.1"))
        .is_ok());
}

#[test]
fn empty_hash_cannot_log_in() {
    let users = Users::new(vec![]);
    let mut def = user_def("nopass", "", Tags::default());
    def.password_hash = String::new();
    users.put(def).unwrap();
    assert_eq!(
        users.authenticate("nopass", "", ip("127.0.0.1")),
        Err(AuthError::InvalidCredentials("nopass".into()))
    );
    assert_eq!(
        users.authenticate("nopass", "x", ip("127.0.0.1")),
        Err(AuthError::InvalidCredentials("nopass".into()))
    );
    // ... but the user exists (e.g. for x509 or a later password).
    assert!(users.get("nopass").is_some());
}

#[test]
fn loopback_users() {
    let users = Users::new(vec!["guest".into()]);
    users
        .put(user_def(
            "guest",
            "guest",
            Tags::List(vec!["administrator".into()]),
        ))
        .unwrap();
    users.put(user_def("bob", "pw", Tags::default())).unwrap();
    for ok in [
        "127.0.0.1",
        "127.1.2.3",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:127.9.9.9",
    ] {
        assert!(users.authenticate("guest", "guest", ip(ok)).is_ok(), "{ok}");
    }
    for remote in [
        "10.0.0.1",
        "192.168.1.1",
        "::ffff:10.0.0.1",
        "fe80::1",
        "128.0.0.1",
        "0.0.0.0",
        "::",
    ] {
        assert_eq!(
            users.authenticate("guest", "guest", ip(remote)),
            Err(AuthError::LoopbackOnly("guest".into())),
            "{remote}"
        );
        // The restriction is only revealed with the right password.
        assert_eq!(
            users.authenticate("guest", "nope", ip(remote)),
            Err(AuthError::InvalidCredentials("guest".into())),
            "{remote}"
        );
        // Other users may come from anywhere.
        assert!(
            users.authenticate("bob", "pw", ip(remote)).is_ok(),
            "{remote}"
        );
    }
    assert_eq!(
        AuthError::LoopbackOnly("guest".into()).to_string(),
        "user 'guest' can only connect via localhost"
    );
}

#[test]
fn put_validates() {
    let users = Users::new(vec![]);
    let err = users.put(user_def("", "x", Tags::default())).unwrap_err();
    assert!(matches!(err, AuthError::Invalid { .. }), "{err}");

    let mut def = user_def("old", "x", Tags::default());
    def.hashing_algorithm = "rabbit_password_hashing_md5".into();
    let err = users.put(def).unwrap_err().to_string();
    assert!(
        err.contains("'old'") && err.contains("rabbit_password_hashing_md5"),
        "{err}"
    );

    let mut def = user_def("bad", "x", Tags::default());
    def.password_hash = "nope!".into();
    let err = users.put(def).unwrap_err().to_string();
    assert!(
        err.contains("'bad'") && err.contains("malformed password hash"),
        "{err}"
    );
    assert!(users.list().is_empty());
}

#[test]
fn put_replaces_and_delete() {
    let users = Users::new(vec![]);
    users
        .put(user_def("a", "one", Tags::Text("x,y".into())))
        .unwrap();
    users
        .put(user_def(
            "a",
            "two",
            Tags::List(vec!["z".into(), "".into()]),
        ))
        .unwrap();
    assert!(users.authenticate("a", "one", ip("127.0.0.1")).is_err());
    assert!(users.authenticate("a", "two", ip("127.0.0.1")).is_ok());
    // Tags are stored as a list, as RabbitMQ 3.10 exports them.
    assert_eq!(users.get("a").unwrap().tags, Tags::List(vec!["z".into()]));
    assert_eq!(users.user("a").unwrap().tags, vec!["z"]);
    users.put(user_def("b", "b", Tags::default())).unwrap();
    assert_eq!(
        users
            .list()
            .iter()
            .map(|u| u.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );

    users
        .set_permission(perm("a", "/", ".*", ".*", ".*"))
        .unwrap();
    assert!(users.delete("a"));
    assert!(!users.delete("a"));
    assert!(users.get("a").is_none());
    // Permissions go with the user (a re-created user starts without any).
    assert!(!users.can_access_vhost("a", "/"));
    assert!(users.permissions().is_empty());
}

#[test]
fn upsert_keeps_or_replaces_hash() {
    let users = Users::new(vec![]);
    let def = users
        .upsert("carol", Some("pw1"), vec!["management".into()])
        .unwrap();
    assert!(password::verify(&def.password_hash, "pw1"));
    assert_eq!(users.get("carol"), Some(def.clone()));
    // None keeps the password, changes tags.
    let def2 = users.upsert("carol", None, vec![]).unwrap();
    assert_eq!(def2.password_hash, def.password_hash);
    assert!(users
        .authenticate("carol", "pw1", ip("127.0.0.1"))
        .unwrap()
        .tags
        .is_empty());
    // A new user without a password cannot log in.
    let def3 = users.upsert("dave", None, vec![]).unwrap();
    assert_eq!(def3.password_hash, "");
    assert!(users.authenticate("dave", "", ip("127.0.0.1")).is_err());
    assert!(users.upsert("", Some("x"), vec![]).is_err());
}

#[test]
fn permissions_check() {
    let users = Users::new(vec![]);
    users.put(user_def("alice", "pw", Tags::default())).unwrap();
    users
        .set_permission(perm("alice", "prod", "^app\\.", ".*", ""))
        .unwrap();
    users
        .set_permission(perm("alice", "/", ".*", ".*", ".*"))
        .unwrap();

    assert!(users.can_access_vhost("alice", "prod"));
    assert!(users.can_access_vhost("alice", "/"));
    assert!(!users.can_access_vhost("alice", "dev"));
    assert!(!users.can_access_vhost("bob", "/"));

    use Access::*;
    assert!(users.check("alice", "prod", Configure, "app.q"));
    assert!(!users.check("alice", "prod", Configure, "xapp.q"));
    assert!(users.check("alice", "prod", Write, "")); // default exchange, as amq.default
    assert!(users.check("alice", "prod", Write, "amq.direct"));
    assert!(!users.check("alice", "prod", Read, "app.q")); // "" denies all
    assert!(!users.check("alice", "dev", Read, "q"));
    assert!(!users.check("bob", "prod", Configure, "app.q"));

    // Replacing a permission takes effect.
    users
        .set_permission(perm("alice", "prod", "", "^$", "app"))
        .unwrap();
    assert!(!users.check("alice", "prod", Configure, "app.q"));
    assert!(!users.check("alice", "prod", Write, ""));
    assert!(users.check("alice", "prod", Read, "my.app.q"));
    let cached = users.permission("alice", "prod").unwrap();
    assert!(cached.allows(Read, "app"));

    assert_eq!(
        users.permissions(),
        vec![
            perm("alice", "/", ".*", ".*", ".*"),
            perm("alice", "prod", "", "^$", "app")
        ]
    );

    assert!(users.clear_permission("alice", "prod"));
    assert!(!users.clear_permission("alice", "prod"));
    assert!(!users.can_access_vhost("alice", "prod"));
    assert!(users.can_access_vhost("alice", "/"));

    users.vhost_deleted("/");
    assert!(!users.can_access_vhost("alice", "/"));
    assert!(users.permissions().is_empty());
}

#[test]
fn bad_permission_regex_is_rejected_and_keeps_old() {
    let users = Users::new(vec![]);
    users
        .set_permission(perm("u", "/", ".*", ".*", ".*"))
        .unwrap();
    let err = users
        .set_permission(perm("u", "/", ".*", ".*", "[a-"))
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("permission regex '[a-' for user 'u' in vhost '/': "),
        "{err}"
    );
    assert!(users.check("u", "/", Access::Read, "q"));
}

#[test]
fn loopback_addresses() {
    assert!(is_loopback(ip("127.0.0.1")));
    assert!(is_loopback(ip("127.255.255.254")));
    assert!(is_loopback(ip("::1")));
    assert!(is_loopback(ip("::ffff:127.0.0.1")));
    assert!(!is_loopback(ip("::ffff:10.0.0.1")));
    assert!(!is_loopback(ip("::127.0.0.1"))); // IPv4-compatible (deprecated), not mapped
    assert!(!is_loopback(ip("10.0.0.1")));
}
