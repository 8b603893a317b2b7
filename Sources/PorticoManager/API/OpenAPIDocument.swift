/// The OpenAPI 3.1 document of the API (`openapi.yaml` beside this file, compiled in), served
/// at `/api/v1/openapi.yaml`.
enum OpenAPIDocument {
    static var bytes: [UInt8] { PackageResources.openapi_yaml }
}
