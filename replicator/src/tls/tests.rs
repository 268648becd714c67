use std::path::PathBuf;

use super::*;

fn tls(url: &str) -> SourceTls {
    split(url).unwrap().1
}

#[test]
fn url_without_tls_params_is_prefer_and_unchanged() {
    let (rest, t) = split("postgresql://u:p@h:5432/db?application_name=x").unwrap();
    assert_eq!(rest, "postgresql://u:p@h:5432/db?application_name=x");
    assert_eq!(t, SourceTls::default());
    assert_eq!(t.verify(), Verify::Nothing);
}

#[test]
fn tls_params_are_taken_out_of_the_url_and_decoded() {
    let (rest, t) = split(
        "postgresql://u:p@127.0.0.1:5432/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fmy%20ca.pem&host=localhost&sslcert=/c.crt&sslkey=/c.key&channel_binding=require&connect_timeout=3",
    )
    .unwrap();
    assert_eq!(rest, "postgresql://u:p@127.0.0.1:5432/db?host=localhost&connect_timeout=3");
    assert_eq!(t.mode, SslMode::VerifyFull);
    assert_eq!(t.root_cert, Some(RootCert::File(PathBuf::from("/tmp/my ca.pem"))));
    assert_eq!(t.cert, Some(PathBuf::from("/c.crt")));
    assert_eq!(t.key, Some(PathBuf::from("/c.key")));
    assert_eq!(t.channel_binding, ChannelBinding::Require);
    assert_eq!(t.verify(), Verify::ChainAndHost);
    // What is left parses for tokio-postgres.
    rest.parse::<postgres::Config>().unwrap();
}

#[test]
fn modes_verify_as_libpq_does() {
    assert_eq!(tls("postgresql://h/db?sslmode=require").verify(), Verify::Nothing);
    // A root certificate file makes require (and prefer) verify the chain.
    assert_eq!(tls("postgresql://h/db?sslmode=require&sslrootcert=/ca").verify(), Verify::Chain);
    assert_eq!(tls("postgresql://h/db?sslrootcert=/ca").verify(), Verify::Chain);
    assert_eq!(tls("postgresql://h/db?sslmode=verify-ca&sslrootcert=/ca").verify(), Verify::Chain);
    assert_eq!(tls("postgresql://h/db?sslmode=disable").mode, SslMode::Disable);
    assert_eq!(tls("postgresql://h/db?sslmode=allow").mode, SslMode::Allow);
    assert_eq!(tls("postgresql://h/db?ssl=true").mode, SslMode::Require);
    // sslrootcert=system defaults to verify-full and refuses weaker modes.
    let sys = tls("postgresql://h/db?sslrootcert=system");
    assert_eq!((sys.mode, sys.root_cert), (SslMode::VerifyFull, Some(RootCert::System)));
    let e = split("postgresql://h/db?sslrootcert=system&sslmode=require").unwrap_err().to_string();
    assert!(e.contains("weak sslmode=require") && e.contains("verify-full"), "{e}");
}

#[test]
fn bad_combinations_are_refused_with_the_reason() {
    let err = |u: &str| split(u).unwrap_err().to_string();
    assert!(err("postgresql://h/db?sslmode=verify-full").contains("needs sslrootcert"));
    assert!(err("postgresql://h/db?sslmode=strict").contains("sslmode=strict is not a mode"));
    assert!(err("postgresql://h/db?sslcert=/c").contains("without sslkey"));
    assert!(err("postgresql://h/db?sslkey=/k").contains("without sslcert"));
    assert!(err("postgresql://h/db?sslmode=disable&channel_binding=require").contains("needs TLS"));
    assert!(err("postgresql://h/db?channel_binding=maybe").contains("channel_binding=maybe"));
    assert!(err("postgresql://h/db?sslpassword=x").contains("sslpassword is not supported"));
}

#[test]
fn keyword_value_strings_work_too() {
    let (rest, t) = split("host=h port=5 user=u password='a b\\'c' sslmode=verify-ca sslrootcert='/x y/ca.pem'").unwrap();
    assert_eq!(t.mode, SslMode::VerifyCa);
    assert_eq!(t.root_cert, Some(RootCert::File(PathBuf::from("/x y/ca.pem"))));
    let c: postgres::Config = rest.parse().unwrap();
    assert_eq!(c.get_password(), Some(&b"a b'c"[..]));
    assert!(split("host=h sslmode").is_err());
}

#[test]
fn set_params_replaces_or_adds() {
    let u = set_params(
        "postgresql://u@h/db?sslrootcert=/old&sslmode=verify-full",
        &[("sslrootcert", "/new dir/root.crt".into()), ("channel_binding", "require".into())],
    )
    .unwrap();
    assert_eq!(u, "postgresql://u@h/db?sslrootcert=/new%20dir/root.crt&sslmode=verify-full&channel_binding=require");
    assert_eq!(tls(&u).root_cert, Some(RootCert::File(PathBuf::from("/new dir/root.crt"))));
    assert_eq!(set_params("postgresql://h/db", &[("sslmode", "require".into())]).unwrap(), "postgresql://h/db?sslmode=require");
    let k = set_params("host=h sslrootcert=/old", &[("sslrootcert", "/n".into())]).unwrap();
    assert_eq!(k, "host='h' sslrootcert='/n'");
}

#[test]
fn libpq_params_carry_every_setting() {
    let t = tls("postgresql://h/db?sslmode=verify-full&sslrootcert=/ca&sslcert=/c&sslkey=/k&channel_binding=require");
    let p = t.libpq_params();
    for (k, v) in [("sslmode", "verify-full"), ("sslrootcert", "/ca"), ("sslcert", "/c"), ("sslkey", "/k"), ("channel_binding", "require")]
    {
        assert!(p.contains(&(k, v.to_string())), "{k}={v} in {p:?}");
    }
}

#[test]
fn rustls_errors_read_as_the_settings_say() {
    let t = tls("postgresql://h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem");
    let e = from_rustls(&rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer), &t, "h").to_string();
    assert!(e.contains("not signed by the CA in sslrootcert=/etc/ca.pem"), "{e}");
    let wrong = rustls::CertificateError::NotValidForNameContext {
        expected: rustls_pki_types::ServerName::try_from("db.example").unwrap(),
        presented: vec!["DnsName(\"other.example\")".into()],
    };
    let e = from_rustls(&rustls::Error::InvalidCertificate(wrong), &t, "db.example").to_string();
    assert!(e.contains("is for other.example, not for db.example (sslmode=verify-full)"), "{e}");
    // Found inside an io::Error, as tokio-postgres and rustls' streams wrap it.
    let io =
        std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer));
    assert!(matches!(explain(&io, &t, "h"), Some(TlsError::UnknownCa { .. })));
}
