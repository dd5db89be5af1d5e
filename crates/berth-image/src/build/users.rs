//! `--chown=user[:group]` resolution against the image's own /etc/passwd
//! and /etc/group, as Docker does: names are looked up in the image being
//! built, numbers are used as they are, and a missing group means the
//! user's number.

use std::path::Path;

use super::tree::Tree;

/// Resolves a chown spec to (uid, gid).
pub(crate) fn resolve_chown(spec: &str, image: &Tree) -> Result<(u32, u32), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(format!(
            "invalid --chown value {spec:?}: expected user[:group]"
        ));
    }
    let uid = match user.parse::<u32>() {
        Ok(n) => n,
        Err(_) => lookup(image, "etc/passwd", user)?,
    };
    let gid = match group {
        None => uid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup(image, "etc/group", g)?,
        },
    };
    Ok((uid, gid))
}

/// The id (third field) of `name` in a passwd or group file of the image.
fn lookup(image: &Tree, file: &str, name: &str) -> Result<u32, String> {
    let missing = || {
        format!(
            "unable to find {} {name:?} in /{file} of the image",
            kind(file)
        )
    };
    let path = image
        .resolve(Path::new(file), true)
        .map_err(|e| format!("reading /{file}: {e}"))?;
    let Some(found) = image
        .lookup(&path)
        .map_err(|e| format!("reading /{file}: {e}"))?
    else {
        return Err(missing());
    };
    let text = std::fs::read(&found.real).map_err(|e| format!("reading /{file}: {e}"))?;
    let text = String::from_utf8_lossy(&text);
    parse_id(&text, name).ok_or_else(missing)
}

fn kind(file: &str) -> &'static str {
    if file.ends_with("group") {
        "group"
    } else {
        "user"
    }
}

fn parse_id(text: &str, name: &str) -> Option<u32> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next()? == name).then_some(())?;
            f.next()?;
            f.next()?.trim().parse().ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let tmp = tempfile::tempdir().unwrap();
        let etc = tmp.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\n# c\nwww:x:33:34::/var/www:/bin/false\n",
        )
        .unwrap();
        std::fs::write(etc.join("group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let tree = Tree::plain(tmp.path());
        type Case<'a> = (&'a str, Result<(u32, u32), &'a str>);
        let cases: &[Case] = &[
            ("0", Ok((0, 0))),
            ("10", Ok((10, 10))),
            ("10:20", Ok((10, 20))),
            ("www", Ok((33, 33))),
            ("www:staff", Ok((33, 50))),
            ("1:staff", Ok((1, 50))),
            (
                "nobody",
                Err("unable to find user \"nobody\" in /etc/passwd of the image"),
            ),
            (
                "0:nogroup",
                Err("unable to find group \"nogroup\" in /etc/group of the image"),
            ),
            ("", Err("invalid --chown value \"\": expected user[:group]")),
            (
                "a:",
                Err("invalid --chown value \"a:\": expected user[:group]"),
            ),
        ];
        for (spec, want) in cases {
            let got = resolve_chown(spec, &tree);
            assert_eq!(got, want.map_err(str::to_string), "{spec:?}");
        }
        let empty = tempfile::tempdir().unwrap();
        assert!(resolve_chown("www", &Tree::plain(empty.path())).is_err());
    }
}
